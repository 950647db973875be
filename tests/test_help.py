"""`trainkit <stage> --help` (issue 20 item 16) and `--verbose` (item 5)."""

from __future__ import annotations

import re

from conftest import DEFAULT_RECIPE, QUIET

from trainkit.cli import main


def test_fit_help_has_text_for_every_key_and_no_internals(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal: count lines at a fixed width
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("usage: trainkit fit --config RECIPE.yaml") and len(lines) < 600
    for internal in ("RNGState", "WorldRecord", "LastCheckpoint", "FitCurves", "EpochLine", "throughput.Throughput", "trainkit.loggers."):
        assert internal not in out, internal
    flat = " ".join(out.split())
    assert "TensorBoardLogger`` if it is installed" not in flat and "W&B run (offline unless you are logged in" in flat
    # every option has help text of its own before jsonargparse's "(type: ..." note
    entries = re.findall(r"^  (--[\w.]+)(?:[^\n]*)\n((?:                        [^\n]*\n)*)", out, re.M)
    options = {name: " ".join(line.strip() for line in body.splitlines()) for name, body in entries}
    heads = {m.group(1): m.group(2) for m in re.finditer(r"^  (--[\w.]+)(?: [A-Z_]+| \{[^}]*\})?(?:, --[\w.+]+ [A-Z_]+)?\s*(.*)$", out, re.M)}
    for key in ("--model.freeze", "--model.unfreeze", "--model.lr_mult", "--model.layer_decay", "--model.ema",
                "--model.swa", "--model.prune", "--early_stopping", "--checkpoint.monitor", "--run.name"):
        text = (heads.get(key, "") + " " + options.get(key, "")).strip()
        assert text and not text.startswith("(type:"), f"{key} has no help: {text!r}"
    missing = [k for k in options if k.startswith(("--model.", "--data.", "--run.", "--checkpoint.", "--diagnostics."))
               and (heads.get(k, "") + " " + options[k]).strip().startswith("(type:")]
    assert not missing, missing


def test_verbose_shows_what_the_log_file_keeps(capsys):
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--run.name=v", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--trainer.logger=false", "--data.num_workers=0", *QUIET]
    assert main(args) == 0
    quiet = capsys.readouterr().err
    assert "GPU available" not in quiet and "Restoring states" not in quiet
    assert main([*args[:3], "--run.name=w", *args[4:], "--verbose"]) == 0
    loud = capsys.readouterr().err
    assert "GPU available" in loud and "Restoring states" in loud
    # the log file keeps all of it either way, every line tagged with its rank
    log = open("runs/digits_mlp/v/trainkit.log").read()
    assert "GPU available" in log and "Restoring states" in log and "[rank 0] INFO" in log
