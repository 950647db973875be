"""Safe loading and secrets: planted pickles are refused, credentials never reach a run's files."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from conftest import DEFAULT_RECIPE, QUIET, trainkit, tree_digest

from trainkit.cli import main

FAST = ["--data.num_workers=0", "--trainer.max_epochs=1", *QUIET]


class Payload:
    """Unpickling this object runs a shell command: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_a_pickle_payload_is_refused(isolated, capsys):
    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--run.name=good", "--trainer.logger=false", *FAST]) == 0
    good = Path("runs/digits_mlp/good")
    marker = isolated / "pwned"
    evil = isolated / "evil.ckpt"
    state = torch.load(good / "checkpoints/last.ckpt", weights_only=True)
    state["callbacks"]["evil"] = Payload(marker)
    torch.save(state, evil)
    before = tree_digest(good)
    capsys.readouterr()

    assert main(["test", "--config", str(DEFAULT_RECIPE), "--run.name=good", f"--ckpt_path={evil}", *QUIET]) == 2
    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--run.name=other", f"--run.resume={evil}", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("refused: loading would run its code") == 2, err
    assert not marker.exists(), "the payload never ran"
    assert tree_digest(good) == before and not Path("runs/digits_mlp/other").exists()


def test_secrets_in_the_environment_never_reach_the_run_files(isolated, monkeypatch):
    secrets = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
               "MY_SERVICE_TOKEN": "tok-5ecret-98765", "DB_PASSWORD": "hunter2hunter2"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a key is set: without this W&B would go online
    # a secret value passed on the command line, in a free-form string key
    out = trainkit("fit", "--config", str(DEFAULT_RECIPE), "--run.name=s", *FAST,
                   f"--trainer.default_root_dir=/tmp/{secrets['DB_PASSWORD']}")
    assert out.returncode == 0, out.stderr[-3000:]
    run = Path("runs/digits_mlp/s")
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and (run / "config.yaml") in files
    for path in files:
        data = path.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in data, f"{name} leaked into {path}"
    assert "default_root_dir: /tmp/***" in (run / "config.yaml").read_text()

    # and a launch script refuses to carry it
    code = main(["launch", "--config", str(DEFAULT_RECIPE), "--slurm", "--dry-run",
                 f"--trainer.default_root_dir=/x/{secrets['MY_SERVICE_TOKEN']}"])
    assert code == 2


def test_resuming_from_another_architecture_is_bad_input(isolated, capsys):
    # no W&B here: its service may still flush that run's logs while the tree is compared
    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--run.name=wide", "--trainer.logger=false", *FAST]) == 0
    ckpt = Path("runs/digits_mlp/wide/checkpoints/last.ckpt")
    before = tree_digest(Path("runs"))
    capsys.readouterr()
    code = main(["fit", "--config", str(DEFAULT_RECIPE), "--run.name=narrow", f"--run.resume={ckpt}",
                 "--model.arch_args={depth: 3, width: 32}", *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "run.resume" in err and "another model" in err and "(256, 64) vs (32, 64)" in err, err
    assert tree_digest(Path("runs")) == before, "nothing written"


def test_more_cpu_processes_than_cores_is_bad_input(capsys):
    cores = os.cpu_count() or 1
    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--trainer.accelerator=cpu",
                 f"--trainer.devices={cores + 1}", *FAST]) == 2
    err = capsys.readouterr().err
    assert "trainer.devices" in err and f"this machine has {cores} cores" in err
    assert not Path("runs").exists()
