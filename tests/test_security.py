"""Safe loading and secrets: planted pickles are refused, credentials never reach a run's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
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


KEYED = '''
from torch import nn


class KeyedNet(nn.Module):
    """A user's model that takes a credential (e.g. to fetch weights) and a note."""

    def __init__(self, num_classes, input_shape, api_key="", note="", hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)
'''


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_secrets_never_reach_the_run_files(isolated, monkeypatch):
    secrets = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
               "MY_SERVICE_TOKEN": "tok-5ecret-98765", "DB_PASSWORD": "hunter2hunter2"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a key is set: without this W&B would go online
    # in the recipe: a secret-named key of a user's model (imported from the current directory)
    key, token = "sk-live-0123456789abcdefghijABCD", "ghp_" + "Z9y8X7w6V5u4T3s2R1q0" * 2
    Path("keyed.py").write_text(KEYED)
    recipe = DEFAULT_RECIPE.read_text().replace("  arch: mlp\n  arch_args: {depth: 3, width: 256}\n",
                                                f"  arch: keyed.KeyedNet\n  arch_args: {{api_key: {key}}}\n")
    assert "keyed.KeyedNet" in recipe
    Path("digits_mlp.yaml").write_text(recipe)
    # on the command line: a secret value in a free-form string key, a credential-like value
    out = trainkit("fit", "--config", "digits_mlp.yaml", "--run.name=s", *FAST, "--trainer.max_epochs=2",
                   f"--trainer.default_root_dir=/tmp/{secrets['DB_PASSWORD']}", f"--model.arch_args.note=see {token}")
    assert out.returncode == 0, out.stderr[-3000:]
    run = Path("runs/digits_mlp/s")
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and (run / "config.yaml") in files
    assert any(p.name == "hparams.yaml" for p in files)
    assert {p.name for p in (run / "checkpoints").glob("*.ckpt")} == {"best.ckpt", "last.ckpt", "previous.ckpt"}
    assert torch.load(run / "checkpoints/best.ckpt", weights_only=True)["hyper_parameters"]["arch_args"] == {
        "api_key": "***", "note": "see ***"}
    for path in files:
        data = path.read_bytes()
        for name, value in {**secrets, "arch_args.api_key": key, "arch_args.note": token}.items():
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


# ten lines, nine levels of aliases: 9 ** 9 (387 million) strings once expanded
BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
{key}: *i
"""


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_a_billion_laughs_recipe_exits_2_in_bounded_memory_and_time():
    import resource
    import subprocess
    import sys

    Path("bomb.yaml").write_text(BILLION_LAUGHS.format(key="model"))
    # 3 GiB of address space (trainkit with torch needs ~2) and a minute: the bomb once took 15 GB and 300 s
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # noqa: E731
    exe = str(Path(sys.executable).with_name("trainkit"))
    out = subprocess.run([exe, "fit", "--config", "bomb.yaml"], capture_output=True, text=True, timeout=60,
                         preexec_fn=limit)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "'bomb.yaml' is refused: aliases expand it" in out.stderr and "Traceback" not in out.stderr
    assert not Path("runs").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["group-file", "value", "space", "loader"])
def test_alias_bombs_are_refused_wherever_trainkit_reads_yaml(where, capsys):
    from trainkit.errors import ConfigError
    from trainkit.safe_yaml import load_yaml

    if where == "loader":  # the loader of run config.yaml files, spaces, lr-find's recipe copy
        with pytest.raises(ConfigError, match="aliases expand it"):
            load_yaml(BILLION_LAUGHS.format(key="x"), "config.yaml")
        assert load_yaml("a: &x {b: 1.0e-3}\nc: *x\n", "small") == {"a": {"b": 0.001}, "c": {"b": 0.001}}
        return
    Path("bomb.yaml").write_text(BILLION_LAUGHS.format(key="max_epochs"))
    inline = "{" + ", ".join(BILLION_LAUGHS.format(key="z").splitlines()) + "}"
    argv = {
        "group-file": ["fit", "--config", str(DEFAULT_RECIPE), "--trainer=bomb.yaml"],  # loaded by jsonargparse
        "value": ["fit", "--config", str(DEFAULT_RECIPE), f"--model.arch_args={inline}"],
        "space": ["sweep", "--config", str(DEFAULT_RECIPE), "--space", "bomb.yaml", "--trials", "1"],
    }[where]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "aliases expand it" in err and "Traceback" not in err
    assert not Path("runs").exists()

