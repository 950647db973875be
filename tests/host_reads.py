"""Count host reads of tensor values during the ordinary steps of a real fit.

A host read (``Tensor.item``, ``bool``/``float``/``int`` of a tensor, ``tolist``, ``cpu``,
``numpy``) makes the host wait for every queued kernel on a GPU. :class:`HostReads` wraps those
methods for the duration of a ``with`` block and attributes each call to the training step in
progress: a step's window runs from its ``on_train_batch_start`` to the next one (Lightning's
own per-step work after the hooks, logging and the next batch's fetch included), and closes at
validation and epoch ends, which may read values. Steps that log (``trainer.log_every_n_steps``)
or monitor (``diagnostics.every_n_steps``) are allowed their batched transfers; every other step
is *ordinary* and must read nothing.

On the CPU this sees reads made from Python only: a C++ op that syncs on CUDA (``nonzero``,
boolean-mask indexing, a copy to the device from pageable memory) is invisible here, which is
what ``torch.cuda.set_sync_debug_mode("error")`` is for on a GPU (benchmarks/gpu.py).

It is a callback a run is given the way a user adds one
(``--trainer.callbacks+={class_path: host_reads.HostReads, init_args: {out: FILE}}``, with
tests/ on the path): it wraps the methods from ``setup("fit")`` to ``teardown`` and writes its
counts to ``FILE.rank<global rank>``, so the same line counts a torchrun DDP run per rank.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

METHODS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


class HostReads(Callback):
    """Count host reads per training step of a fit (see the module docstring).

    Args:
        out: where :meth:`summary` goes at teardown, as ``<out>.rank<global rank>`` (None: kept
            in memory only; then wrap the methods yourself with ``with reads:``).
    """

    def __init__(self, out: str | None = None) -> None:
        self.out = out
        self.step: int | None = None  # the step whose window is open
        self.reads: dict[int, Counter] = defaultdict(Counter)
        self.where: dict[int, list[str]] = defaultdict(list)  # first frames of each read (reports)
        self.log_every = 50
        self.monitor_every: int | None = None
        self.check_every: int | None = None  # the NaN guard's host checks
        self.seen: set[int] = set()
        self._saved: dict[str, Any] = {}

    # -- wrapping ------------------------------------------------------------------------------
    def __enter__(self) -> "HostReads":
        for name in METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._wrap(name, original))
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    def _wrap(self, name: str, original: Any) -> Any:
        counter = self

        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if counter.step is not None:
                counter.reads[counter.step][name] += 1
                if len(counter.where[counter.step]) < 5:
                    frames = traceback.format_stack(limit=8)[:-1]
                    counter.where[counter.step].append(f"{name}:\n" + "".join(frames[-4:]))
            return original(tensor, *args, **kwargs)

        return counted

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.out is not None and not self._saved:
            self.__enter__()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.out is not None and self._saved:
            self.__exit__()
            Path(f"{self.out}.rank{trainer.global_rank}").write_text(json.dumps(self.summary()))

    # -- step windows --------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.log_every = trainer.log_every_n_steps
        every = [m for c in trainer.callbacks for m in [c, *getattr(c, "callbacks", [])]]  # groups too
        monitors = [c for c in every if type(c).__name__ == "Monitors"]
        self.monitor_every = monitors[0].every_n_steps if monitors else None
        guards = [c for c in every if type(c).__name__ == "NaNGuard"]
        self.check_every = guards[0].every if guards else None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.step = trainer.global_step
        self.seen.add(trainer.global_step)

    def _close(self, *args: Any) -> None:
        self.step = None

    on_validation_start = on_train_epoch_end = on_train_end = _close

    # -- results -------------------------------------------------------------------------------
    def ordinary(self, step: int) -> bool:
        """Neither a logging nor a monitor step, nor one that ends with the NaN guard's check
        (by default on the logging steps)."""
        logs = bool(self.log_every) and (step + 1) % self.log_every == 0
        monitors = self.monitor_every is not None and step % self.monitor_every == 0
        checks = self.check_every is not None and (step + 1) % self.check_every == 0
        return not (logs or monitors or checks)

    def ordinary_reads(self) -> dict[int, dict[str, int]]:
        """``{step: {method: count}}`` of the ordinary steps that read anything."""
        return {s: dict(c) for s, c in self.reads.items() if self.ordinary(s) and sum(c.values())}


    def summary(self) -> dict[str, Any]:
        """JSON-able counts: steps seen, ordinary steps, reads per step kind."""
        bad = self.ordinary_reads()
        return {
            "ordinary_reads": {str(k): v for k, v in bad.items()},
            "where": {str(k): self.where[k] for k in list(bad)[:2]},
            "reads_by_step": {str(k): dict(v) for k, v in self.reads.items() if sum(v.values())},
            "ordinary_steps": sorted(s for s in self.seen if self.ordinary(s)),
            "steps": sorted(self.seen),
            "log_every": self.log_every,
            "monitor_every": self.monitor_every,
            "check_every": self.check_every,
        }


def report(summary: dict[str, Any]) -> str:
    """The first offending steps of a :meth:`HostReads.summary` with the code that read them."""
    bad = summary["ordinary_reads"]
    lines = [f"{len(bad)} ordinary steps read tensor values: {dict(list(bad.items())[:5])}"]
    for step, where in summary["where"].items():
        lines += [f"-- step {step}", *where]
    return "\n".join(lines)


def count_fit(argv: list[str], out: Path) -> dict[str, Any]:
    """Run ``trainkit <argv>`` in this process with a :class:`HostReads` among the trainer's
    callbacks (as a user adds one: ``--trainer.callbacks+=``); its :meth:`HostReads.summary`."""
    from trainkit.runner import run

    spec = json.dumps({"class_path": "host_reads.HostReads", "init_args": {"out": str(out)}})
    run([*argv, f"--trainer.callbacks+={spec}"])
    return json.loads(Path(f"{out}.rank0").read_text())
