"""Init schemes draw the statistics their formulas promise, and keep deep signals alive (or not)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET
from torch import nn

from trainkit.cli import main
from trainkit.errors import ConfigError
from trainkit.nn.activations import activation_gain
from trainkit.nn.craft import build_net
from trainkit.nn.init import INIT_SCHEMES, init_model, lsuv_, zero_init_last

RELU = math.sqrt(2.0)
N = 1024
# scheme spec -> (expected mean, expected std, expected kurtosis or None) for a 1024x1024 weight, relu gain
EXPECTED = {
    "zeros": ({}, 0.0, 0.0, None),
    "constant": ({"value": 0.3}, 0.3, 0.0, None),
    "normal": ({"mean": 0.1, "std": 0.02}, 0.1, 0.02, 3.0),
    "uniform": ({"a": -0.2, "b": 0.4}, 0.1, 0.6 / math.sqrt(12), 1.8),
    "xavier_uniform": ({}, 0.0, RELU * math.sqrt(2 / (2 * N)), 1.8),
    "xavier_normal": ({}, 0.0, RELU * math.sqrt(2 / (2 * N)), 3.0),
    "kaiming_uniform": ({}, 0.0, RELU / math.sqrt(N), 1.8),
    "kaiming_normal": ({}, 0.0, RELU / math.sqrt(N), 3.0),
    "lecun_uniform": ({}, 0.0, 1 / math.sqrt(N), 1.8),
    "lecun_normal": ({}, 0.0, 1 / math.sqrt(N), 3.0),
    "orthogonal": ({}, 0.0, RELU / math.sqrt(N), None),
    "lsuv": ({}, 0.0, 1 / math.sqrt(N), None),  # the pre-init: orthonormal, before the data pass
}
PER_TENSOR = [n for n in INIT_SCHEMES.names() if n != "checkpoint"]


def test_every_scheme_has_an_expected_statistic():
    assert sorted(EXPECTED) == sorted(PER_TENSOR)


@pytest.mark.parametrize("name", PER_TENSOR)
def test_scheme_statistics_on_a_1024x1024_layer(name):
    torch.manual_seed(0)
    args, mean, std, kurtosis = EXPECTED[name]
    layer = nn.Linear(N, N)
    init_model(layer, {"scheme": name, **args}, act_gain=RELU)
    w = layer.weight.detach().double()
    assert float(layer.bias.detach().abs().max()) == 0.0, "biases start at zero"
    assert float(w.mean()) == pytest.approx(mean, abs=0.02 * max(std, 1e-3))
    assert float(w.std()) == pytest.approx(std, rel=0.02, abs=1e-12)
    if kurtosis is not None:  # tells uniform (1.8) from normal (3) draws
        z = (w - w.mean()) / w.std()
        assert float(z.pow(4).mean()) == pytest.approx(kurtosis, rel=0.03)
    if name in ("orthogonal", "lsuv"):
        gain = RELU if name == "orthogonal" else 1.0
        torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(N, dtype=torch.float64), atol=1e-4, rtol=0)


def test_kaiming_fan_out_and_the_gain_of_each_activation():
    torch.manual_seed(0)
    layer = nn.Linear(1024, 256)  # fan_in 1024, fan_out 256
    init_model(layer, {"scheme": "kaiming_normal", "mode": "fan_out"}, act_gain=RELU)
    assert float(layer.weight.detach().std()) == pytest.approx(RELU / math.sqrt(256), rel=0.02)
    conv = nn.Conv2d(64, 128, 3)  # fan_in 64 * 9
    tanh = activation_gain("tanh")
    init_model(conv, {"scheme": "kaiming_normal"}, act_gain=tanh)
    assert float(conv.weight.detach().std()) == pytest.approx(tanh / math.sqrt(64 * 9), rel=0.02)
    # gains: torch's where it has them, and an explicit `gain` wins
    assert tanh == pytest.approx(5 / 3)
    assert activation_gain({"name": "leaky_relu", "negative_slope": 0.2}) == pytest.approx(math.sqrt(2 / 1.04))
    assert activation_gain("gelu") == pytest.approx(1 / math.sqrt(0.4252), rel=1e-3)  # 1 / sqrt(E[gelu(z)^2])
    init_model(layer, {"scheme": "xavier_normal", "gain": 1.0}, act_gain=RELU)
    assert float(layer.weight.detach().std()) == pytest.approx(math.sqrt(2 / 1280), rel=0.02)


def hidden_stds(depth: int, activation: str, init: dict, width: int = 256) -> list[float]:
    """Std of each hidden layer's activation output for N(0, 1) inputs."""
    torch.manual_seed(0)
    net = build_net("mlp", 10, (width,), activation, {"depth": depth, "width": width}, None, None, init)
    acts = [m for m in net if isinstance(m, (nn.Tanh, nn.ReLU))]
    stds: list[float] = []
    for m in acts:
        m.register_forward_hook(lambda _m, _i, out: stds.append(float(out.std())))
    with torch.no_grad():
        net(torch.randn(512, width))
    assert len(stds) == depth
    return stds


@pytest.mark.parametrize(
    "activation, init",
    [("tanh", {"scheme": "xavier_normal"}), ("relu", {"scheme": "kaiming_normal"}), ("relu", {"scheme": "orthogonal"})],
)
def test_good_inits_keep_the_signal_through_20_layers(activation, init):
    stds = hidden_stds(20, activation, init)
    assert 0.5 < stds[-1] / stds[0] < 2.0, stds


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_small_normal_init_makes_the_signal_collapse(activation):
    stds = hidden_stds(20, activation, {"scheme": "normal", "std": 0.01})
    assert stds[-1] < stds[0] / 100, stds


def test_lsuv_gives_unit_output_variance_per_layer():
    torch.manual_seed(0)
    net = build_net("mlp", 10, (32,), "tanh", {"depth": 8, "width": 128}, "none", None, {"scheme": "lsuv"})
    calibration = torch.randn(256, 32) * 3 + 1
    variances = lsuv_(net, calibration, tol=0.02)
    assert len(variances) == 9 and all(abs(v - 1) < 0.02 for v in variances)
    # measured again on fresh data from the same distribution
    outputs: list[float] = []
    for m in net:
        if isinstance(m, nn.Linear):
            m.register_forward_hook(lambda _m, _i, out: outputs.append(float(out.var())))
    with torch.no_grad():
        net(torch.randn(4096, 32) * 3 + 1)
    assert all(abs(v - 1) < 0.1 for v in outputs), outputs


def test_biases_zero_norms_one_and_zero_init_last_makes_blocks_identities():
    torch.manual_seed(0)
    net = build_net("resnet20", 10, (1, 8, 8), "relu", None, "batch", None,
                    {"scheme": "kaiming_normal", "mode": "fan_out", "zero_init_last": True})
    blocks = [m for m in net.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 9
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    zeroed = {id(b.norm2) for b in blocks}
    for norm in norms:
        assert float(norm.bias.abs().max()) == 0.0
        assert torch.all(norm.weight == (0.0 if id(norm) in zeroed else 1.0))
    assert float(net.head.bias.abs().max()) == 0.0
    # a block with an identity shortcut now maps its (non-negative, post-ReLU) input to itself
    block = blocks[1]
    x = torch.rand(4, 16, 8, 8)
    block.eval()
    torch.testing.assert_close(block(x), x)
    assert zero_init_last(nn.Sequential(nn.Linear(2, 2))) == 0


def test_checkpoint_warm_start_loads_weights_and_names_a_mismatch(tmp_path, capsys):
    from trainkit.module import Classifier

    torch.manual_seed(1)
    source = Classifier(arch_args={"depth": 2, "width": 32})
    torch.save({"state_dict": source.state_dict()}, tmp_path / "source.ckpt")
    warm = Classifier(arch_args={"depth": 2, "width": 32}, init={"scheme": "checkpoint", "path": str(tmp_path / "source.ckpt")})
    for (name, a), b in zip(source.net.state_dict().items(), warm.net.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match=r"model.init.path: .*shape mismatch.*1.weight \(32, 64\) vs \(16, 64\)"):
        Classifier(arch_args={"depth": 2, "width": 16}, init={"scheme": "checkpoint", "path": str(tmp_path / "source.ckpt")})
    # non-strict: everything but the 3-class head loads, the head keeps its init
    partial = Classifier(arch_args={"depth": 2, "width": 32}, num_classes=3,
                         init={"scheme": "checkpoint", "path": str(tmp_path / "source.ckpt"), "strict": False})
    assert torch.equal(partial.net[1].weight, source.net[1].weight)
    assert partial.net[-1].out_features == 3
    # through the CLI: exit code 2, one message naming the key
    code = main(["fit", "--config", str(DEFAULT_RECIPE), *QUIET, "--model.arch_args={depth: 2, width: 16}",
                 f"--model.init={{scheme: checkpoint, path: {tmp_path / 'source.ckpt'}}}"])
    err = capsys.readouterr().err
    assert code == 2 and "model.init.path" in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "init, words",
    [("{scheme: kaiming}", ["model.init", "'kaiming'", "kaiming_normal"]),
     ("{scheme: kaiming_normal, mode: fan_inn}", ["model.init", "'fan_inn'"]),
     ("{scheme: normal, sd: 0.1}", ["model.init", "'sd'", "std"]),
     ("{std: 0.1}", ["model.init", "scheme"])],
)
def test_bad_init_specs_exit_2(init, words, capsys):
    assert main(["fit", "--config", str(DEFAULT_RECIPE), *QUIET, f"--model.init={init}"]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
