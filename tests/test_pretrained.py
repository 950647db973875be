"""Pretrained weights for adapted models and optional extras (issue 20 item 15).

timm and torchvision cannot be installed beside this CPU torch (PITFALLS), so what is tested
here is what needs neither: the loader that puts a weights file into a model built for other
classes and channels (a user's class-path model stands in for the library's), the local
caches it reads, the refusals, and the messages for missing or broken extras. The calls into
timm/torchvision themselves (create_model, get_model_weights, their download) are not run.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_RECIPE
from user_models import TinyNet

from trainkit.errors import ConfigError
from trainkit.models import build_arch
from trainkit.models.adapters import hf_cached_file, load_pretrained, torch_hub_file
from trainkit.nn.craft import build_net


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_weights_of_another_task_load_into_the_model_built_for_this_one(tmp_path, caplog):
    torch.manual_seed(0)
    source = TinyNet(1000, (3, 32, 32), hidden=8)  # "ImageNet": RGB, 1000 classes
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    model = TinyNet(10, (1, 8, 8), hidden=8)  # digits: one channel, 10 classes
    head_before = model.head.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        load_pretrained(model, tmp_path / "w.pth", "user_models.TinyNet")
    mine, theirs = model.state_dict(), source.state_dict()
    # the first conv: RGB summed for one channel; the rest equal; the head (other class count) at init
    torch.testing.assert_close(mine["body.0.weight"], theirs["body.0.weight"].sum(1, keepdim=True))
    for key in ("body.0.bias", "body.1.weight", "body.1.running_var"):
        torch.testing.assert_close(mine[key], theirs[key])
    assert torch.equal(model.head.weight, head_before)
    # a gray image gives the pretrained conv's response to the same image in RGB
    gray = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(model.body[0](gray), source.body[0](gray.expand(1, 3, 8, 8)), rtol=1e-5, atol=1e-6)
    assert "7 of 9 tensors; kept at init: head.weight, head.bias" in caplog.text


@pytest.mark.parametrize(
    "content, words",
    [
        (None, ["does not exist"]),
        (b"not a checkpoint", ["cannot load weights"]),
        ("evil", ["refused: loading would run its code"]),
        ("other", ["does not hold weights of", "0 of its model's 9 tensors"]),
    ],
    ids=["missing", "corrupt", "pickle-payload", "other-model"],
)
def test_weights_files_that_cannot_serve_are_refused(content, words, tmp_path, capsys):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "evil":
        torch.save({"w": torch.zeros(1), "x": Evil()}, path)
    elif content == "other":
        torch.save(torch.nn.Linear(3, 3).state_dict(), path)
    with pytest.raises(ConfigError) as e:
        load_pretrained(TinyNet(10, (1, 8, 8)), path, "user_models.TinyNet")
    assert str(e.value).startswith("model.arch_args.pretrained: ") and all(w in str(e.value) for w in words), e.value
    assert "pwned" not in capsys.readouterr().out


def test_pretrained_true_reads_the_local_caches_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert hf_cached_file("timm/resnet18.a1_in1k") is None
    snapshot = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert hf_cached_file("timm/resnet18.a1_in1k") == snapshot / "model.safetensors"
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    with pytest.raises(ConfigError, match=r"pretrained: .*resnet18-f37072fd.pth are not in the local torch hub cache .*"
                                          r"never downloads unless asked: set arch_args.pretrained: download"):
        torch_hub_file(url, "torchvision:resnet18")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert torch_hub_file(url, "torchvision:resnet18") == cached


def test_pretrained_keys_are_checked_and_the_vision_extra_named():
    with pytest.raises(ConfigError, match=r"model.init: would re-draw the weights that arch_args.pretrained loads"):
        build_net("timm:resnet18", 10, (1, 8, 8), "relu", {"pretrained": True}, None, None, {"scheme": "kaiming_normal"})
    for lib in ("timm", "torchvision"):
        try:
            __import__(lib)
        except ImportError:
            with pytest.raises(ConfigError, match=rf"model.arch: needs {lib}, from trainkit's 'vision' extra: "
                                                  r"pip install 'trainkit\[vision\]' \(README: installing on CPU-only"):
                build_arch(f"{lib}:resnet18", 10, (1, 8, 8), "relu", {"pretrained": "w.pt"})
    # trainkit's own architectures and user classes warm-start through model.init instead
    with pytest.raises(ConfigError, match=r"model.arch_args: .*'pretrained'"):
        build_arch("mlp", 10, (1, 8, 8), "relu", {"pretrained": "w.pt"})


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_a_broken_torchvision_beside_torch_is_one_clear_line(tmp_path):
    """A torchvision that fails to import (the CUDA build beside the CPU torch fails with this
    error) breaks `import torchmetrics`, so all of trainkit: one line, no traceback."""
    fake = tmp_path / "site"
    (fake / "torchvision").mkdir(parents=True)
    (fake / "torchvision" / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    (fake / "torchvision-0.28.0.dist-info").mkdir()
    (fake / "torchvision-0.28.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    exe = Path(sys.executable).with_name("trainkit")
    out = subprocess.run([str(exe), "fit", "--config", str(DEFAULT_RECIPE)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(fake)}, cwd=tmp_path, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "trainkit: error: torchvision is installed but cannot be imported (RuntimeError: operator torchvision::nms "
        "does not exist); its build does not match this torch: install the build made for it (README: installing "
        "on CPU-only machines) or pip uninstall torchvision; torchmetrics imports torchvision whenever it is installed"]
    assert not (tmp_path / "runs").exists()
