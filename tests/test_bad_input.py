"""Bad input: exit code 2, one message naming the culprit, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DEFAULT_RECIPE, QUIET, tree_digest

from trainkit.cli import main

R = str(DEFAULT_RECIPE)

# (id, argv after `trainkit`, recipe text or None, words the message must contain)
CASES = [
    ("unknown-cli-key", ["fit", "--config", R, "--model.archx=mlp"], None, ["model.archx", "model.arch"]),
    ("unknown-recipe-key", ["fit", "--config", "bad.yaml"], "model:\n  arch: mlp\n  widht: 3\n", ["widht"]),
    ("unknown-top-key", ["fit", "--config", "bad.yaml"], "modle:\n  arch: mlp\n", ["modle"]),
    ("nested-key-typo", ["fit", "--config", R, "--early_stopping.patiance=3"], None,
     ["early_stopping.patiance", "did you mean early_stopping.patience?", "early_stopping.min_delta"]),
    ("abbreviated-key", ["fit", "--config", R, "--trainer.max_epoch=3"], None, ["max_epoch", "trainer.max_epochs"]),
    ("wrong-type", ["fit", "--config", R, "--trainer.max_epochs=abc"], None, ["trainer.max_epochs", "abc"]),
    ("wrong-type-recipe", ["fit", "--config", "bad.yaml"], "data:\n  batch_size: many\n", ["data.batch_size", "many"]),
    ("unknown-arch", ["fit", "--config", R, "--model.arch=mlpp"], None, ["model.arch", "'mlpp'", "did you mean 'mlp'"]),
    ("unknown-arch-arg", ["fit", "--config", R, "--model.arch_args.deep=3"], None, ["model.arch_args", "'deep'", "depth"]),
    ("unknown-activation", ["fit", "--config", R, "--model.activation=rellu"], None, ["model.activation", "'relu'"]),
    ("unknown-optimizer", ["fit", "--config", R, "--model.optimizer.name=sgdd"], None, ["model.optimizer", "'sgd'", "adamw"]),
    ("unknown-optimizer-arg", ["fit", "--config", R, "--model.optimizer.momentun=0.9"], None, ["'momentun'", "momentum"]),
    ("negative-lr", ["fit", "--config", R, "--model.optimizer.lr=-0.1"], None, ["model.optimizer.lr", "-0.1"]),
    ("unknown-schedule", ["fit", "--config", R, "--model.schedule={name: cosin}"], None, ["model.schedule.name", "'cosine'"]),
    ("bad-lr-scaling", ["fit", "--config", R, "--model.lr_scaling={rule: linaer}"], None, ["model.lr_scaling.rule", "sqrt"]),
    ("auroc-thresholds-one", ["fit", "--config", R, "--model.auroc_thresholds=1"], None,
     ["model.auroc_thresholds", "got 1", "integer >= 2", "null"]),
    ("auroc-thresholds-zero", ["fit", "--config", "bad.yaml"], "model:\n  auroc_thresholds: 0\n",
     ["model.auroc_thresholds", "got 0", "integer >= 2"]),
    ("auroc-thresholds-negative", ["fit", "--config", R, "--model.auroc_thresholds=-5"], None,
     ["model.auroc_thresholds", "got -5", "integer >= 2"]),
    ("auroc-thresholds-not-int", ["fit", "--config", R, "--model.auroc_thresholds=2.5"], None,
     ["model.auroc_thresholds", "2.5", "int"]),
    ("channels-last-on-a-table", ["fit", "--config", R, "--data.dataset=breast_cancer", "--model.channels_last=true"], None,
     ["model.channels_last", "image inputs", "(30,)"]),
    ("unknown-dataset", ["fit", "--config", R, "--data.dataset=digit"], None, ["data.dataset", "'digits'", "breast_cancer"]),
    ("bad-fraction", ["fit", "--config", R, "--data.val_fraction=1.5"], None, ["data.val_fraction", "1.5"]),
    ("batch-larger-than-split", ["fit", "--config", R, "--data.batch_size=5000"], None, ["data.batch_size", "5000"]),
    ("bad-monitor", ["fit", "--config", R, "--checkpoint.monitor=val/accuracy"], None, ["checkpoint.monitor", "val/acc"]),
    ("bad-resume", ["fit", "--config", R, "--run.resume=sometimes"], None, ["run.resume", "auto, never"]),
    ("bad-run-name", ["fit", "--config", R, "--run.name=../escape"], None, ["run.name", "../escape"]),
    ("missing-config", ["fit", "--config", "nope.yaml"], None, ["nope.yaml"]),
    ("malformed-yaml", ["fit", "--config", "bad.yaml"], "model: {arch: [\n", ["bad.yaml", "YAML", "line"]),
    ("python-tag-yaml", ["fit", "--config", "bad.yaml"], "model: !!python/object/apply:os.system ['true']\n", ["bad.yaml"]),
    ("test-unknown-run", ["test", "--config", R, "--run.name", "nosuch"], None, ["run.name", "nosuch", "earlier"]),
    ("test-without-run", ["test", "--config", R], None, ["run.name"]),
    ("test-missing-ckpt", ["test", "--config", R, "--run.name", "earlier", "--ckpt_path", "gone.ckpt"], None,
     ["ckpt_path", "gone.ckpt", "best.ckpt"]),
    ("unknown-command", ["fitt"], None, ["fitt", "fit"]),
    ("unknown-list-kind", ["list", "archz"], None, ["archz", "archs"]),
]


@pytest.fixture
def earlier_run(isolated: Path) -> Path:
    """A finished run of the default recipe that no bad input may touch."""
    run = isolated / "runs" / "digits_mlp" / "earlier"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run / "config.yaml").write_text("model: {arch: mlp}\n")
    (run / "metrics.json").write_text('{"val/acc": 0.97}\n')
    return run


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_clear_message(case, earlier_run: Path, capsys):
    _, argv, recipe, words = case
    assert_refused(argv, recipe, words, earlier_run, capsys)


def assert_refused(argv: list[str], recipe: str | None, words: list[str], earlier_run: Path, capsys) -> None:
    """``trainkit <argv>`` exits 2 with one message holding ``words``, and writes nothing."""
    if recipe is not None:
        Path("bad.yaml").write_text(recipe)
    before = tree_digest(earlier_run.parents[1])
    code = main(argv + QUIET if argv[0] in ("fit", "test") else argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if "error:" in line]
    assert len(message) == 1, err
    for word in words:
        assert word in err, f"{word!r} missing from: {err}"
    # nothing written: the earlier run is intact and no other run dir appeared
    assert tree_digest(earlier_run.parents[1]) == before
    assert sorted(p.name for p in (earlier_run.parent).iterdir()) == ["earlier"]
    assert not Path("bad.yaml").exists() or recipe is not None


def test_python_yaml_tag_is_never_executed(isolated, capsys):
    marker = isolated / "pwned"
    Path("bad.yaml").write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["fit", "--config", "bad.yaml"]) == 2
    assert not marker.exists()
