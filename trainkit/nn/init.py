"""Init schemes by name (``model.init: {scheme: kaiming_normal, mode: fan_in, ...}``).

A scheme draws the weight of every linear and conv layer of any architecture (adapted ones
too); biases start at zero and norm layers at weight one, bias zero. Schemes that scale with
the nonlinearity take their gain from ``model.activation`` unless the recipe gives ``gain``.
``zero_init_last: true`` also zeroes the last norm of each residual branch (Goyal et al. 2017),
so every residual block starts as the identity.

Two schemes are not per-tensor: ``lsuv`` (orthogonal, then a data pass on rank 0, see
:func:`lsuv_`) and ``checkpoint`` (warm start from saved weights, see :func:`load_weights`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize

from trainkit.arguments import call_checked, check_types
from trainkit.errors import ConfigError
from trainkit.nn.norm import is_norm
from trainkit.registry import Registry, check_kwargs

KEY = "model.init"
INIT_SCHEMES: Registry = Registry("init scheme")
WEIGHTED = (nn.Linear, _ConvNd)


def fans(w: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a linear ``(out, in)`` or conv ``(out, in, *kernel)`` weight."""
    receptive = math.prod(w.shape[2:])
    return w.shape[1] * receptive, w.shape[0] * receptive


def _fan(w: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ConfigError(f"mode must be fan_in or fan_out, got {mode!r}", f"{KEY}.mode")
    return fans(w)[mode == "fan_out"]


def _gain(gain: float | None, act_gain: float) -> float:
    return act_gain if gain is None else gain


def _uniform_std(w: Tensor, std: float) -> Tensor:
    bound = math.sqrt(3.0) * std  # U(-b, b) has std b / sqrt(3)
    return w.uniform_(-bound, bound)


@INIT_SCHEMES.register("zeros")
def zeros(w: Tensor, act_gain: float) -> Tensor:
    """all weights 0 (nothing is learned past the first layer: a cautionary baseline)"""
    return w.zero_()


@INIT_SCHEMES.register("constant")
def constant(w: Tensor, act_gain: float, value: float = 0.1) -> Tensor:
    """all weights `value`: every unit of a layer stays identical (symmetry is never broken)"""
    return w.fill_(value)


@INIT_SCHEMES.register("normal")
def normal(w: Tensor, act_gain: float, mean: float = 0.0, std: float = 0.01) -> Tensor:
    """N(mean, std^2), independent of the layer size"""
    return w.normal_(mean, std)


@INIT_SCHEMES.register("uniform")
def uniform(w: Tensor, act_gain: float, a: float = -0.05, b: float = 0.05) -> Tensor:
    """U(a, b), independent of the layer size"""
    if not a < b:
        raise ConfigError(f"uniform needs a < b, got a={a}, b={b}", KEY)
    return w.uniform_(a, b)


@INIT_SCHEMES.register("xavier_uniform")
def xavier_uniform(w: Tensor, act_gain: float, gain: float | None = None) -> Tensor:
    """Glorot & Bengio 2010: std = gain * sqrt(2 / (fan_in + fan_out)), uniform"""
    fan_in, fan_out = fans(w)
    return _uniform_std(w, _gain(gain, act_gain) * math.sqrt(2.0 / (fan_in + fan_out)))


@INIT_SCHEMES.register("xavier_normal")
def xavier_normal(w: Tensor, act_gain: float, gain: float | None = None) -> Tensor:
    """Glorot & Bengio 2010: std = gain * sqrt(2 / (fan_in + fan_out)), normal"""
    fan_in, fan_out = fans(w)
    return w.normal_(0.0, _gain(gain, act_gain) * math.sqrt(2.0 / (fan_in + fan_out)))


@INIT_SCHEMES.register("kaiming_uniform")
def kaiming_uniform(w: Tensor, act_gain: float, mode: str = "fan_in", gain: float | None = None) -> Tensor:
    """He et al. 2015: std = gain / sqrt(fan) (mode fan_in or fan_out), uniform"""
    return _uniform_std(w, _gain(gain, act_gain) / math.sqrt(_fan(w, mode)))


@INIT_SCHEMES.register("kaiming_normal")
def kaiming_normal(w: Tensor, act_gain: float, mode: str = "fan_in", gain: float | None = None) -> Tensor:
    """He et al. 2015: std = gain / sqrt(fan) (mode fan_in or fan_out), normal"""
    return w.normal_(0.0, _gain(gain, act_gain) / math.sqrt(_fan(w, mode)))


@INIT_SCHEMES.register("lecun_uniform")
def lecun_uniform(w: Tensor, act_gain: float) -> Tensor:
    """LeCun et al. 1998: std = 1 / sqrt(fan_in), uniform (gain 1 by definition, as for SELU)"""
    return _uniform_std(w, 1.0 / math.sqrt(fans(w)[0]))


@INIT_SCHEMES.register("lecun_normal")
def lecun_normal(w: Tensor, act_gain: float) -> Tensor:
    """LeCun et al. 1998: std = 1 / sqrt(fan_in), normal (gain 1 by definition)"""
    return w.normal_(0.0, 1.0 / math.sqrt(fans(w)[0]))


@INIT_SCHEMES.register("orthogonal")
def orthogonal(w: Tensor, act_gain: float, gain: float | None = None) -> Tensor:
    """Saxe et al. 2014: a (semi-)orthogonal matrix times gain (conv kernels flattened)"""
    return nn.init.orthogonal_(w, gain=_gain(gain, act_gain))


@INIT_SCHEMES.register("lsuv")
def lsuv(w: Tensor, act_gain: float, tol: float = 0.02, max_iters: int = 10, batch_size: int = 256) -> Tensor:
    """Mishkin & Matas 2015: orthogonal, then each layer rescaled to unit output variance on data"""
    # the data pass (lsuv_) runs when the trainer has data, on rank 0; here only the pre-init,
    # and the checks of the data pass's arguments (so they fail when the recipe is read)
    for name, value, low in (("tol", tol, "> 0"), ("max_iters", max_iters, ">= 1"), ("batch_size", batch_size, ">= 1")):
        if not (value > 0 if low == "> 0" else value >= 1):
            raise ConfigError(f"must be {low}, got {value!r}", f"{KEY}.{name}")
    return nn.init.orthogonal_(w)


@INIT_SCHEMES.register("checkpoint")
def checkpoint(w: Tensor, act_gain: float, path: str = "", strict: bool = True, new_head: bool = False) -> Tensor:
    """warm start: the weights of a saved run (a trainkit .ckpt or a state_dict file) at `path`; new_head: keep a fresh last layer"""
    return w  # whole-model: see load_weights


def split_spec(spec: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """``(scheme, its arguments, zero_init_last)`` of a ``model.init`` spec, validated.

    Raises:
        ConfigError: no or unknown scheme, or an argument the scheme does not take.
    """
    if not isinstance(spec, dict) or "scheme" not in spec:
        raise ConfigError(f"needs a 'scheme' (one of: {', '.join(INIT_SCHEMES.names())}), got {spec!r}", KEY)
    kwargs = {k: v for k, v in spec.items() if k not in ("scheme", "zero_init_last")}
    name = spec["scheme"]
    try:
        scheme = INIT_SCHEMES.get(name)
        check_kwargs(scheme, kwargs, f"init scheme {name!r}", skip=("w", "act_gain"))
        check_types(scheme, kwargs, KEY)
    except ConfigError as e:
        raise e.with_key(KEY) from None
    if name == "checkpoint":
        if not kwargs.get("path"):
            raise ConfigError("the checkpoint scheme needs a path", f"{KEY}.path")
    else:  # draw a dummy weight: the scheme's own checks (std >= 0, a < b, ...) refuse bad values now
        call_checked(scheme, kwargs, KEY, f"init scheme {name!r}", args=(torch.empty(4, 4), 1.0))
    zero_last = spec.get("zero_init_last", False)
    if not isinstance(zero_last, bool):
        raise ConfigError(f"must be true or false, got {zero_last!r}", f"{KEY}.zero_init_last")
    return name, kwargs, zero_last


@torch.no_grad()
def init_model(model: nn.Module, spec: dict[str, Any], act_gain: float) -> nn.Module:
    """Apply the init ``spec`` to every layer of ``model`` in place (lsuv: its pre-init only)."""
    name, kwargs, zero_last = split_spec(spec)
    if name == "checkpoint":
        return load_weights(model, **kwargs)
    scheme = INIT_SCHEMES.get(name)
    for module in model.modules():
        if is_norm(module):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(getattr(module, "weight", None), nn.Parameter) and module.weight.ndim >= 2:
            scheme(module.weight, act_gain, **kwargs)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    if zero_last:
        zero_init_last(model)
    return model


def zero_init_last(model: nn.Module) -> int:
    """Zero the weight of the last norm in each residual branch; returns how many were zeroed.

    Blocks opt in with a ``zero_init_last()`` method (trainkit's and timm's convention);
    torchvision's BasicBlock/Bottleneck are recognized by their ``bn2``/``bn3``.
    """
    count = 0
    for module in model.modules():
        if callable(getattr(module, "zero_init_last", None)):
            module.zero_init_last()
            count += 1
        elif type(module).__name__ in ("BasicBlock", "Bottleneck") and hasattr(module, "bn2"):
            nn.init.zeros_(getattr(module, "bn3", module.bn2).weight)
            count += 1
    return count


def _scale_weight(module: nn.Module, factor: float) -> None:
    if parametrize.is_parametrized(module, "weight"):
        module.parametrizations.weight.original0.mul_(factor)  # weight norm: scale g
    else:
        module.weight.mul_(factor)


@torch.no_grad()
def lsuv_(model: nn.Module, x: Tensor, tol: float = 0.02, max_iters: int = 10, **_: Any) -> list[float]:
    """Layer-sequential unit-variance rescaling (Mishkin & Matas 2015, Alg. 1), in place.

    In forward order, each linear/conv layer's weight is divided by the std of its output on
    ``x`` until the variance is within ``tol`` of 1. Dropout is off during the passes and the
    norm layers' running statistics are left as they were. Returns the final variances.
    """
    layers = [m for m in model.modules() if isinstance(m, WEIGHTED)]
    seen: list[nn.Module] = []
    outputs: dict[int, Tensor] = {}

    def record(module: nn.Module, _inp: Any, out: Tensor) -> None:
        if all(module is not s for s in seen):
            seen.append(module)
        outputs[id(module)] = out

    hooks = [m.register_forward_hook(record) for m in layers]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    try:
        model(x)
        variances = []
        for layer in list(seen):
            for _ in range(max_iters):
                var = float(outputs[id(layer)].float().var())
                if abs(var - 1.0) < tol or var == 0.0:
                    break
                _scale_weight(layer, 1.0 / math.sqrt(var))
                model(x)
            variances.append(float(outputs[id(layer)].float().var()))
    finally:
        for h in hooks:
            h.remove()
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
        for m, mode in modes.items():
            m.train(mode)
    return variances


def head_keys(model: nn.Module) -> list[str]:
    """state_dict keys of the last linear/conv layer of ``model`` (the classifier head)."""
    name = [n for n, m in model.named_modules() if isinstance(m, WEIGHTED)][-1]
    return [k for k in model.state_dict() if k.startswith(f"{name}.")]


def load_weights(model: nn.Module, path: str, strict: bool = True, new_head: bool = False) -> nn.Module:
    """Load the architecture weights saved at ``path`` into ``model`` (warm start).

    ``path`` is a trainkit/Lightning checkpoint (its ``net.*`` weights are used) or a plain
    state_dict. With ``strict`` every parameter must match by name and shape; otherwise the
    matching ones load and the rest keep their init. ``new_head`` leaves the last linear/conv
    layer (the head) with its fresh init: fine-tuning on another class count. Pruning masks in
    the file (``weight_orig``/``weight_mask``) are attached to ``model`` and loaded.

    Raises:
        ConfigError: unreadable file, or (strict) missing, unexpected or mis-shaped weights.
    """
    from trainkit.checkpoints import safe_load

    saved = safe_load(path, f"{KEY}.path")
    state = saved.get("state_dict", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{path!r} holds no state_dict", f"{KEY}.path")
    if any(k.startswith("net.") for k in state):  # a Classifier checkpoint: keep the architecture
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    from trainkit.nn.prune import attach_masks  # prune imports this module

    attach_masks(model, state)
    if new_head:
        head = head_keys(model)
        saved_head = {k.replace("_orig", "").replace("_mask", "") for k in head}
        state = {k: v for k, v in state.items() if k not in head and k not in saved_head}
    own = {k: v for k, v in model.state_dict().items() if not (new_head and k in head)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if strict and (missing or unexpected or shapes):
        parts = [f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (saved vs model)", shapes)) if keys]
        raise ConfigError(f"weights in {path!r} do not match the model ({'; '.join(parts)}); "
                          "set strict: false to load only the matching ones", f"{KEY}.path")
    model.load_state_dict({k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False)
    return model
