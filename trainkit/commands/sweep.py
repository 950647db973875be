"""``trainkit sweep``: check the recipe and space, open the study, run trials (here and in worker
processes), write the results to the sweep dir ``<run.root>/<experiment>/sweep-<study>/``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Sequence

from trainkit.commands.common import join_overrides
from trainkit.optional import optional_import
from trainkit.sweep.plan import Sweep, parser, resolve
from trainkit.sweep.space import dump_space
from trainkit.sweep.study import grid_size


def main(argv: Sequence[str]) -> int:
    """``trainkit sweep``: see :func:`parser`."""
    optional_import("optuna", "sweep")  # the 'sweep' extra: one message if it is missing
    args, rest = parser().parse_known_args(list(argv))
    overrides = join_overrides(rest, "sweep")
    sweep = resolve(args, overrides)
    from trainkit.sweep.study import open_study, pruner, sampler, storage, work

    grid = args.sampler == "grid"
    n_trials = args.trials or (grid_size(sweep.params) if grid else 20)
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    if not args.sweep_dir:
        from trainkit.rundir import atomic_write_text

        atomic_write_text(sweep.sweep_dir / "space.yaml", dump_space(sweep.params))
    storage_obj = storage(args.storage, sweep.sweep_dir)
    # random and TPE draw different points per worker; a grid's order must be the same in all
    task = int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)) + int(os.environ.get("TRAINKIT_SWEEP_WORKER", 0))
    seed = args.seed if grid else args.seed + task
    study = open_study(sweep.name, storage_obj, sampler(args.sampler, sweep.params, seed), pruner(args.pruner),
                       sweep.direction, sweep.sweep_dir)
    quotas = [n_trials // args.workers + (i < n_trials % args.workers) for i in range(args.workers)]
    workers = [_start_worker(args, overrides, sweep, q, i) for i, q in enumerate(quotas) if i and q]
    base = ["--config", args.config, *overrides]
    try:
        work(study, sweep.params, quotas[0], base=base, sweep_dir=sweep.sweep_dir, metric=sweep.metric, grid=grid)
    finally:
        codes = [w.wait() for w in workers]
    if args.no_results:
        return max(codes, default=0)
    from trainkit.sweep.results import write_results
    from trainkit.sweep.study import sweep_lock

    with sweep_lock(sweep.sweep_dir):  # array tasks finishing together: one writer at a time
        summary = write_results(study, sweep.sweep_dir, sweep.metric, sweep.root, sweep.experiment)
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"sweep dir: {sweep.sweep_dir}")
    return max(codes, default=0)


def _start_worker(args: argparse.Namespace, overrides: list[str], sweep: Sweep, trials: int, index: int) -> subprocess.Popen:
    """Another process running ``trials`` trials of the same study and storage."""
    storage_arg = args.storage or f"sqlite:///{(sweep.sweep_dir / 'study.db').resolve()}"
    cmd = [
        sys.executable, "-m", "trainkit", "sweep", "--config", args.config, "--study", sweep.name,
        "--storage", storage_arg, "--trials", str(trials), "--sampler", args.sampler, "--metric", sweep.metric,
        "--direction", sweep.direction, "--pruner", args.pruner, "--seed", str(args.seed),
        "--sweep-dir", str(sweep.sweep_dir), "--no-results", *overrides,
    ]
    return subprocess.Popen(cmd, env={**os.environ, "TRAINKIT_SWEEP_WORKER": str(index)})
