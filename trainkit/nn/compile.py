"""``model.compile``: ``torch.compile`` of the network (not the metrics, not the loss).

``compile: false`` (default) | ``true`` | ``{mode, fullgraph, dynamic, backend}`` (the keyword
arguments of ``torch.compile``; ``backend`` defaults to inductor). The network is compiled in
place (``nn.Module.compile``), so checkpoints keep their keys and load into an eager model.
Training batches keep one shape when compiling (``data.drop_last`` defaults to on then), so
the graph is not recompiled for a short last batch.

Where it cannot work, the run is refused before anything is written (exit 2): inductor's CPU
code needs the C++ compiler it would call (``$CXX``, else ``g++``), its CUDA code needs Triton.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from typing import Any

import torch
from torch import nn

from trainkit.errors import ConfigError

KEY = "model.compile"
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
KEYS = ("mode", "fullgraph", "dynamic", "backend")


def check_compile(spec: bool | dict[str, Any] | None) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments of a ``model.compile`` value, or ``None`` (eager).

    Raises:
        ConfigError: an unknown key, mode or backend, or a value of the wrong type.

    >>> check_compile(False), check_compile(True), check_compile({"mode": "max-autotune"})
    (None, {}, {'mode': 'max-autotune'})
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return {}
    if not isinstance(spec, dict):
        raise ConfigError(f"must be false, true or {{mode, fullgraph, dynamic, backend}}, got {spec!r}", KEY)
    out = dict(spec)
    for key in out:
        if key not in KEYS:
            raise ConfigError(f"unknown key {key!r} (valid: {', '.join(KEYS)})", KEY)
    mode = out.get("mode")
    if mode is not None and mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r} (valid: {', '.join(MODES)})", f"{KEY}.mode")
    if not isinstance(out.get("fullgraph", False), bool):
        raise ConfigError(f"must be true or false, got {out['fullgraph']!r}", f"{KEY}.fullgraph")
    if out.get("dynamic") is not None and not isinstance(out["dynamic"], bool):
        raise ConfigError(f"must be null, true or false, got {out['dynamic']!r}", f"{KEY}.dynamic")
    backend = out.get("backend")
    if backend is not None:
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ConfigError(f"unknown backend {backend!r} (valid: {', '.join(sorted(known))})", f"{KEY}.backend")
    return out


def check_toolchain(kwargs: dict[str, Any] | None, device: torch.device) -> None:
    """Refuse a compile that would fail at the first step for want of a compiler, cheaply:
    the same lookup inductor makes (``$CXX``, else ``g++``; Triton on CUDA), nothing compiled.

    Raises:
        ConfigError: (``model.compile``) naming what is missing and what would work instead.
    """
    if kwargs is None or kwargs.get("backend", "inductor") != "inductor":
        return
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ConfigError("torch.compile's CUDA backend (inductor) needs Triton, which is not installed "
                              "(pip install triton), or use {backend: aot_eager}, or false", KEY)
        return
    cxx = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(cxx) is None:
        raise ConfigError(f"torch.compile's CPU backend (inductor) needs a C++ compiler; {cxx!r} (from $CXX, else "
                          "g++) is not on the PATH: install one or set CXX, or use {backend: aot_eager}, or false", KEY)


def compile_net(net: nn.Module, kwargs: dict[str, Any] | None) -> nn.Module:
    """``net`` compiled in place (its state_dict keys unchanged), or as it is when ``kwargs`` is None."""
    if kwargs is not None:
        net.compile(**kwargs)
    return net
