"""Architectures, activations, norms and dropout do what their names promise."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import DEFAULT_RECIPE, QUIET, ROOT, trainkit
from torch import nn
from torch.nn.utils import parametrize

from trainkit.cli import main
from trainkit.errors import ConfigError
from trainkit.models import ARCHS, build_arch
from trainkit.nn.activations import ACTIVATIONS, make_activation
from trainkit.nn.craft import build_net
from trainkit.nn.norm import NORMS, make_norm, swap_norms, sync_batchnorm
from trainkit.nn.regularize import set_dropout
from trainkit.nn.syncbn import CPUSyncBatchNorm
from trainkit.runner import TrainkitCLI

NATIVE = [n for n in ARCHS.names() if n not in ("timm", "torchvision")]
# weighted layers on the main path (convs + linears, projection shortcuts not counted)
DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110, "resnet18": 18, "cnn": 5, "mlp": 3}


def weighted_depth(net: nn.Module) -> int:
    layers = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return len([n for n in layers if "shortcut" not in n])


@pytest.mark.parametrize("name", NATIVE)
def test_architectures_have_their_depth(name):
    args = {"width": 4} if name.startswith("resnet") else None  # depth does not depend on width
    net = build_arch(name, 10, (1, 8, 8), "relu", args)
    assert weighted_depth(net) == DEPTHS[name]
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name, args", [("mlp", None), ("cnn", {"channels": [8, 16]}), ("resnet20", {"width": 8})])
def test_architectures_fit_a_batch(name, args):
    torch.manual_seed(0)
    net = build_arch(name, 10, (1, 8, 8), "relu", args)
    # a few steps on one fixed batch drive the loss down: forward and backward are wired up
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(net(x), y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses


def test_mlp_norm_position_and_activation_arguments():
    before = build_arch("mlp", 10, (4,), {"name": "leaky_relu", "negative_slope": 0.3}, {"depth": 1, "width": 6}, norm="batch")
    after = build_arch("mlp", 10, (4,), "relu", {"depth": 1, "width": 6, "norm_position": "after"}, norm="layer")
    assert [type(m).__name__ for m in before] == ["Flatten", "Linear", "BatchNorm1d", "LeakyReLU", "Linear"]
    assert [type(m).__name__ for m in after] == ["Flatten", "Linear", "ReLU", "LayerNorm", "Linear"]
    assert before[3](torch.tensor([-1.0])).item() == pytest.approx(-0.3)
    with pytest.raises(ConfigError, match="norm_position"):
        build_arch("mlp", 10, (4,), "relu", {"norm_position": "middle"})


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_activations_by_name_and_prelu_learns_its_slope(name):
    act = make_activation(name)
    x = torch.linspace(-3, 3, 61)
    reference = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": nn.functional.gelu,
                 "silu": nn.functional.silu, "elu": nn.functional.elu,
                 "leaky_relu": lambda t: nn.functional.leaky_relu(t, 0.01), "prelu": lambda t: torch.where(t > 0, t, 0.25 * t)}
    torch.testing.assert_close(act(x), reference[name](x))
    if name == "prelu":
        slope = next(act.parameters())
        act(torch.tensor([-2.0])).sum().backward()
        assert slope.requires_grad and slope.grad.item() == pytest.approx(-2.0)


def test_unknown_activation_argument_is_named():
    with pytest.raises(ConfigError, match=r"model.activation: .*'slope'.*negative_slope"):
        make_activation({"name": "leaky_relu", "slope": 0.1})


@pytest.mark.parametrize("name", NORMS.names())
def test_norms_normalize_over_the_axes_their_names_say(name):
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5) * 3 + 2
    norm = make_norm({"name": name, "groups": 2} if name == "group" else name, 4, spatial=True).train()
    y = norm(x)
    axes = {"batch": (0, 2, 3), "layer": (1, 2, 3), "instance": (2, 3)}
    if name in axes:
        torch.testing.assert_close(y.mean(axes[name]), torch.zeros_like(y.mean(axes[name])), atol=1e-5, rtol=0)
        torch.testing.assert_close(y.var(axes[name], unbiased=False), torch.ones_like(y.mean(axes[name])), atol=1e-3, rtol=0)
    elif name == "group":  # two groups of two channels, per sample
        g = y.view(8, 2, 2, 5, 5)
        torch.testing.assert_close(g.mean((2, 3, 4)), torch.zeros(8, 2), atol=1e-5, rtol=0)
    else:  # none and weight are not layers
        assert isinstance(norm, nn.Identity)


def test_weight_norm_reparametrizes_every_layer_from_the_drawn_init():
    torch.manual_seed(0)
    plain = build_net("cnn", 10, (1, 8, 8), "relu", None, "none", None, {"scheme": "kaiming_normal"})
    torch.manual_seed(0)
    wn = build_net("cnn", 10, (1, 8, 8), "relu", None, "weight", None, {"scheme": "kaiming_normal"})
    layers = [m for m in wn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    for p_layer, w_layer in zip([m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))], layers):
        torch.testing.assert_close(w_layer.weight, p_layer.weight)  # w = g v / ||v|| equals the drawn weight
        g = w_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.mul_(2)
        torch.testing.assert_close(w_layer.weight, 2 * p_layer.weight)  # g alone sets the scale


def test_instance_norm_needs_images():
    with pytest.raises(ConfigError, match="model.norm: instance"):
        build_arch("mlp", 10, (4,), "relu", None, norm="instance")


def test_user_class_by_class_path_gets_norm_swapped_and_dropout_overridden(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--trainer.fast_dev_run=true", "--data.num_workers=0", *QUIET]
    cli = TrainkitCLI([*args, "--model.arch=user_models.TinyNet", "--model.arch_args={hidden: 6}",
                       "--model.norm={name: group, groups: 3}", "--model.dropout=0.4"])
    net = cli.model.net
    assert type(net).__name__ == "TinyNet" and net.head.in_features == 6
    assert isinstance(net.body[1], nn.GroupNorm) and net.body[1].num_groups == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert net.body[5].p == 0.4
    assert main([*args, "--model.arch=user_models.NoSuchNet"]) == 2


def test_swap_norms_and_set_dropout_on_any_module():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.1), nn.Flatten(), nn.Dropout(0.2))
    swap_norms(net, "instance")
    assert isinstance(net[1], nn.GroupNorm) and net[1].num_groups == 4
    assert set_dropout(net, 0.3) == 2 and net[2].p == net[4].p == 0.3
    with pytest.raises(ConfigError, match="model.dropout"):
        set_dropout(net, 1.5)


def test_dropout_is_identity_at_eval_and_preserves_the_expectation_at_train():
    torch.manual_seed(0)
    net = build_arch("mlp", 3, (20,), "relu", {"depth": 1, "width": 512}, dropout=0.5)
    drop = [m for m in net if isinstance(m, nn.Dropout)]
    assert len(drop) == 1 and drop[0].p == 0.5
    x = torch.randn(1, 20)
    without = nn.Sequential(*[m for m in net if not isinstance(m, nn.Dropout)])
    with torch.no_grad():
        net.eval()
        torch.testing.assert_close(net(x), without(x))
        net.train()
        samples = torch.cat([net(x) for _ in range(4000)])
    # the head is linear after the dropout, so E[net_train(x)] = net_eval(x); stderr ~ std / sqrt(4000)
    mean, stderr = samples.mean(0), samples.std(0) / 4000**0.5
    assert torch.all((mean - without(x)[0]).abs() < 4 * stderr), (mean, without(x), stderr)
    assert samples.std(0).min() > 0, "dropout is active at train"


def test_adapters_name_the_vision_extra_when_missing():
    for lib in ("timm", "torchvision"):
        try:
            __import__(lib)
        except ImportError:
            with pytest.raises(ConfigError, match=r"model.arch: .*'vision' extra.*trainkit\[vision\]"):
                build_arch(f"{lib}:resnet18", 10, (1, 8, 8), "relu", None)


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18"])
def test_adapters_build_the_libraries_models_with_trainkit_craft(name):
    pytest.importorskip(name.split(":")[0])
    torch.manual_seed(0)
    net = build_net(name, 10, (1, 32, 32), "relu", None, "group", 0.3, {"scheme": "kaiming_normal", "mode": "fan_out"})
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert not any(type(m) is nn.BatchNorm2d for m in net.modules())
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert float(conv.weight.detach().std()) == pytest.approx(2**0.5 / fan_out**0.5, rel=0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpu_sync_batchnorm_equals_batch_norm_over_the_global_batch(tmp_path):
    """Two gloo ranks with uneven shards: outputs, input and parameter gradients match full-batch BN."""
    from ddp_workers import syncbn_worker

    torch.manual_seed(0)
    data = {"x": torch.randn(13, 3, 4, 4, dtype=torch.float64) * 2 + 1, "upstream": torch.randn(13, 3, 4, 4, dtype=torch.float64),
            "weight": torch.rand(3, dtype=torch.float64) + 0.5, "bias": torch.randn(3, dtype=torch.float64)}
    torch.save(data, tmp_path / "data.pt")
    mp.spawn(syncbn_worker, args=(2, free_port(), str(tmp_path / "data.pt"), str(tmp_path / "out")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"out.rank{r}", weights_only=True) for r in (0, 1)]

    bn = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.copy_(data["weight"])
        bn.bias.copy_(data["bias"])
    x = data["x"].clone().requires_grad_(True)
    y = bn(x)
    (y * data["upstream"]).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad)
    # DDP sums (then averages) parameter gradients over ranks
    torch.testing.assert_close(ranks[0]["weight_grad"] + ranks[1]["weight_grad"], bn.weight.grad)
    torch.testing.assert_close(ranks[0]["bias_grad"] + ranks[1]["bias_grad"], bn.bias.grad)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], bn.running_mean)
        torch.testing.assert_close(r["running_var"], bn.running_var)


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_sync_batchnorm_in_a_two_process_gloo_run(isolated, monkeypatch):
    """A real `trainkit fit` with 2 DDP processes on the CPU: batch norm is synchronized on both ranks."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    Path("cb.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: ddp_workers.RecordNormLayers\n"
        f"      init_args: {{path: {isolated / 'norms'}}}\n"
    )
    common = ["fit", "--config", str(DEFAULT_RECIPE), "--config", "cb.yaml", "--model.norm=batch",
              "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=2",
              "--data.num_workers=0", *QUIET]
    run = trainkit(*common, "--run.name", "ddp")
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads((isolated / f"norms.rank{r}").read_text()) for r in (0, 1)]
    assert records[0] == records[1] == {"world_size": 2, "types": ["CPUSyncBatchNorm"]}


def test_sync_batchnorm_is_automatic_with_several_processes_and_overridable():
    def types(world_size, enabled, device="cpu"):
        net = build_net("mlp", 10, (4,), "relu", {"depth": 1, "width": 4}, "batch", None, None)
        return {type(m).__name__ for m in sync_batchnorm(net, world_size, enabled, device).modules()}

    assert "CPUSyncBatchNorm" in types(2, None) and "BatchNorm1d" in types(1, None)
    assert "BatchNorm1d" in types(2, False) and "CPUSyncBatchNorm" in types(1, True)
    assert "SyncBatchNorm" in types(2, None, "cuda"), "torch's own SyncBatchNorm on GPUs"


def test_one_process_keeps_plain_batch_norm():
    cli = TrainkitCLI(["fit", "--config", str(DEFAULT_RECIPE), "--trainer.fast_dev_run=true", "--data.num_workers=0",
                       *QUIET, "--model.norm=batch"])
    types = {type(m) for m in cli.model.modules()}
    assert nn.BatchNorm1d in types and CPUSyncBatchNorm not in types and nn.SyncBatchNorm not in types


def test_no_custom_autograd_functions_without_gradcheck():
    """trainkit defines no torch.autograd.Function: its gradients come from torch's own ops."""
    sources = (ROOT / "trainkit").rglob("*.py")
    assert not [p for p in sources if re.search(r"autograd\.Function|\(Function\)", p.read_text())]


def test_gradcheck_of_the_model_craft_in_float64():
    from trainkit.nn.regularize import penalty

    torch.manual_seed(0)
    net = build_net("mlp", 3, (4,), "tanh", {"depth": 2, "width": 5}, "weight", None, {"scheme": "orthogonal"}).double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: net(t), (x,))
    # the elastic-net penalty's gradient is l1 * sign(w) + l2 * w on weights, zero on biases
    layer = nn.Linear(4, 5).double()
    penalty(layer, 0.1, 0.3).backward()
    torch.testing.assert_close(layer.weight.grad, 0.1 * layer.weight.detach().sign() + 0.3 * layer.weight.detach())
    assert layer.bias.grad is None
    bn = CPUSyncBatchNorm(3).double()
    assert torch.autograd.gradcheck(bn, (torch.randn(5, 3, dtype=torch.float64, requires_grad=True),))


def test_model_craft_keys_through_the_recipe_cli():
    cli = TrainkitCLI(["fit", "--config", str(DEFAULT_RECIPE), "--trainer.fast_dev_run=true", "--data.num_workers=0", *QUIET,
                       "--model.arch_args={depth: 2, width: 512}", "--model.norm=layer", "--model.dropout=0.2",
                       "--model.activation={name: leaky_relu, negative_slope: 0.2}", "--model.label_smoothing=0.1",
                       "--model.init={scheme: orthogonal}"])
    net = cli.model.net
    assert [type(m).__name__ for m in net][1:6] == ["Linear", "LayerNorm", "LeakyReLU", "Dropout", "Linear"]
    assert net[3].negative_slope == 0.2 and net[4].p == 0.2 and cli.model.hparams.label_smoothing == 0.1
    # orthogonal with the leaky-relu gain: W W^T = gain^2 I for the 512x512 layer (before the one training step)
    gain2 = 2 / (1 + 0.2**2)
    w = net[5].weight.detach()
    assert float((w @ w.T).diagonal().mean()) == pytest.approx(gain2, rel=0.05)


def test_channels_last_trains_the_same_weights_with_nhwc_convs():
    def trained(*extra: str) -> nn.Module:
        args = ["fit", "--config", str(ROOT / "recipes" / "digits_resnet.yaml"), "--trainer.fast_dev_run=3",
                "--trainer.logger=false", *QUIET, *extra]
        return TrainkitCLI(args).model

    default, nhwc = trained(), trained("--model.channels_last=true")
    convs = [m for m in nhwc.net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not all(c.weight.is_contiguous(memory_format=torch.channels_last)
                   for c in default.net.modules() if isinstance(c, nn.Conv2d))
    # the same math in another memory order: 3 steps of SGD end at the same weights (float noise)
    for (name, a), b in zip(default.state_dict().items(), nhwc.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
