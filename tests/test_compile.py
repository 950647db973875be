"""model.compile: the compiled network trains like the eager one; a compile that cannot work
is refused before anything runs; GPU defaults are resolved and recorded in the run's config."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEFAULT_RECIPE, QUIET

from trainkit.cli import main
from trainkit.gpu_defaults import GPUConfig, resolve

FAST = ["--data.num_workers=0", *QUIET, "--trainer.max_steps=4", "--trainer.log_every_n_steps=1",
        "--trainer.limit_val_batches=0", "--model.dropout=0", "--diagnostics.monitors=false"]


def step_losses(run: str) -> list[float]:
    rows = csv.DictReader(Path(f"runs/digits_mlp/{run}/metrics.csv").open())
    return [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]


@pytest.mark.slow  # inductor compiles the forward and backward with g++: over a minute on 2 cores
def test_compiled_losses_equal_eager_ones():
    for name, compile_ in (("eager", "false"), ("compiled", "true")):
        assert main(["fit", "--config", str(DEFAULT_RECIPE), *FAST, f"--model.compile={compile_}", f"--run.name={name}"]) == 0
    eager, compiled = step_losses("eager"), step_losses("compiled")
    assert len(eager) == len(compiled) == 4
    # the same weights, batches and float32 math; inductor fuses and reorders reductions, so the
    # sums differ in the last bits: 1e-5 on losses of ~2.3 is ~500 float32 ulps of slack
    assert compiled == pytest.approx(eager, abs=1e-5)
    assert eager[-1] < eager[0], "it trained"
    config = yaml.safe_load(Path("runs/digits_mlp/compiled/config.yaml").read_text())
    assert config["model"]["compile"] is True and config["data"]["drop_last"] is True
    assert yaml.safe_load(Path("runs/digits_mlp/eager/config.yaml").read_text())["data"]["drop_last"] is False


def test_compile_without_a_cpp_compiler_is_refused_before_anything_runs(capsys, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")  # the compiler inductor would call
    code = main(["fit", "--config", str(DEFAULT_RECIPE), *FAST, "--model.compile=true"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "model.compile: torch.compile's CPU backend (inductor) needs a C++ compiler; '/nonexistent/g++'" in err
    assert "Traceback" not in err and not Path("runs").exists()


@pytest.mark.parametrize("value, words", [
    ("{mode: fastest}", "model.compile.mode: unknown mode 'fastest' (valid: default, reduce-overhead"),
    ("{fulgraph: true}", "model.compile: unknown key 'fulgraph' (valid: mode, fullgraph, dynamic, backend)"),
])
def test_bad_compile_values_name_the_key(value, words, capsys):
    assert main(["fit", "--config", str(DEFAULT_RECIPE), *FAST, f"--model.compile={value}"]) == 2
    assert words in capsys.readouterr().err
    assert not Path("runs").exists()


def test_gpu_defaults_follow_the_device_and_are_recorded():
    # CUDA image training: TF32 and cuDNN autotuning; tables: TF32 only; CPU: torch's defaults
    assert resolve(GPUConfig(), None, cuda=True, images=True, fixed_shapes=True, deterministic=False) == ("high", True)
    assert resolve(GPUConfig(), None, cuda=True, images=False, fixed_shapes=True, deterministic=False) == ("high", False)
    assert resolve(GPUConfig(), None, cuda=True, images=True, fixed_shapes=False, deterministic=False) == ("high", False)
    assert resolve(GPUConfig(), None, cuda=True, images=True, fixed_shapes=True, deterministic=True) == ("high", False)
    assert resolve(GPUConfig(), None, cuda=False, images=True, fixed_shapes=True, deterministic=False) == ("highest", False)
    before = torch.get_float32_matmul_precision()
    try:
        args = ["fit", "--config", str(DEFAULT_RECIPE), *FAST, "--trainer.logger=false", "--trainer.max_steps=1"]
        assert main([*args, "--gpu.matmul_precision=medium", "--trainer.benchmark=true", "--run.name=set"]) == 0
        assert torch.get_float32_matmul_precision() == "medium" and torch.backends.cudnn.benchmark
        assert main([*args, "--run.name=auto"]) == 0
        on_cuda = torch.cuda.is_available()
        for run, precision, benchmark in (("set", "medium", True), ("auto", "high" if on_cuda else "highest", False)):
            config = yaml.safe_load(Path(f"runs/digits_mlp/{run}/config.yaml").read_text())
            assert (config["gpu"]["matmul_precision"], config["trainer"]["benchmark"]) == (precision, benchmark), run
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.benchmark = False


def test_bad_matmul_precision_names_the_key(capsys):
    assert main(["fit", "--config", str(DEFAULT_RECIPE), *FAST, "--gpu.matmul_precision=low"]) == 2
    assert "gpu.matmul_precision: must be null or one of highest, high, medium, got 'low'" in capsys.readouterr().err
