"""Optional dependencies (extras), imported only where a recipe or command needs them, with one
clear message when they are missing or installed but broken.

A broken install is the common case on CPU-only machines: the torchvision build that matches
torch 2.13 is a CUDA build, so beside the CPU torch ``import torchvision`` fails with
"operator torchvision::nms does not exist"; torchmetrics imports torchvision whenever it is
installed, so then nothing of trainkit starts (README: installing the vision extra on CPU-only
machines).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from trainkit.errors import ConfigError

# module -> the extra that installs it
EXTRAS = {"timm": "vision", "torchvision": "vision", "optuna": "sweep", "safetensors": "vision"}


def optional_import(module: str, key: str) -> ModuleType:
    """``import module``, for the recipe key or command ``key`` that needs it.

    Raises:
        ConfigError: not installed (naming the extra), or installed but failing to import
            (naming the error and how to repair the install).
    """
    top = module.split(".")[0]
    extra = EXTRAS.get(top, top)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if getattr(e, "name", None) and not str(e.name).startswith(top):
            raise ConfigError(broken(top, e), key) from None
        raise ConfigError(f"needs {top}, from trainkit's {extra!r} extra: pip install 'trainkit[{extra}]' "
                          f"(README: installing on CPU-only machines)", key) from None
    except Exception as e:  # noqa: BLE001  (a broken build raises RuntimeError, OSError, ...)
        raise ConfigError(broken(top, e), key) from None


def broken(package: str, error: BaseException) -> str:
    """The message for a package that is installed but cannot be imported."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (f"{package} is installed but cannot be imported ({type(error).__name__}: {first}); its build does not "
            f"match this torch: install the build made for it (README: installing on CPU-only machines) or "
            f"pip uninstall {package}")


def explain_broken_dependency(error: BaseException) -> str | None:
    """One line for an import of trainkit's own dependencies that failed because an optional
    package beside them is broken (torchmetrics importing a mismatched torchvision); None when
    the error is something else."""
    chain: list[BaseException] = []
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    for e in chain:
        text = f"{e} {getattr(e, 'name', '')}"
        for package in ("torchvision", "timm"):
            if package in text:
                return broken(package, e) + f"; torchmetrics imports {package} whenever it is installed"
    tb = chain[0].__traceback__
    while tb is not None:
        if "/torchvision/" in tb.tb_frame.f_code.co_filename:
            return broken("torchvision", chain[0]) + "; torchmetrics imports torchvision whenever it is installed"
        tb = tb.tb_next
    return None
