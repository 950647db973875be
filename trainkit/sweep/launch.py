"""``trainkit launch --sweep``: a SLURM array job whose tasks each run one trial of a shared study.

The recipe and space are checked here (exit 2 before anything reaches the queue); the tasks get
the study name and an explicit storage, so they all join the same study.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from typing import Sequence

from trainkit.errors import ConfigError
from trainkit.launch import add_sbatch_options, render_sbatch, sbatch_settings, template
from trainkit.sweep.command import parser as sweep_parser
from trainkit.sweep.command import resolve
from trainkit.sweep.space import dump_space
from trainkit.sweep.study import grid_size


def parser():
    p = sweep_parser()
    p.prog = "trainkit launch --sweep"
    p.description = "Render a SLURM array job: N tasks, each `trainkit sweep --study NAME --trials 1` on one storage."
    p.set_defaults(workers=None)
    s = p.add_argument_group("slurm (--workers K: at most K tasks at once)")
    add_sbatch_options(s, "trainkit-sweep", "in the sweep dir")
    s.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    return p


def cmd_launch_sweep(argv: Sequence[str]) -> int:
    """Check, render, write and submit the array job (``--dry-run``: print it only)."""
    args, overrides = parser().parse_known_args(list(argv))
    for bad in (o for o in overrides if not o.startswith("--")):
        raise ConfigError(f"overrides look like --key=value, got {bad!r}", "launch")
    workers = args.workers
    args.workers = 1
    if args.study is None:
        args.study = time.strftime("%Y%m%d-%H%M%S")  # baked into the script: every task joins it
    sweep = resolve(args, overrides)
    grid = args.sampler == "grid"
    trials = args.trials or (grid_size(sweep.params) if grid else 20)
    if grid:
        trials = min(trials, grid_size(sweep.params))  # more tasks would find the grid done
    storage = args.storage or f"sqlite:///{(sweep.sweep_dir / 'study.db').resolve()}"
    space = sweep.sweep_dir / "space.yaml" if args.refine else Path(args.space)
    task_args = [
        "--config", args.config, "--space", str(space), "--study", sweep.name, "--storage", storage,
        "--sampler", args.sampler, "--metric", sweep.metric, "--direction", sweep.direction,
        "--pruner", args.pruner, "--seed", str(args.seed), *overrides,
    ]
    settings = sbatch_settings(args, {"array": f"0-{trials - 1}" + (f"%{workers}" if workers else "")})
    script = render_sbatch(template("sweep.sbatch").read_text(), settings, task_args)
    print(f"sweep {sweep.name}: {trials} array tasks, one trial each; sweep dir {sweep.sweep_dir}; storage {storage}")
    if args.dry_run:
        print(script, end="")
        return 0
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep.sweep_dir / "space.yaml").write_text(dump_space(sweep.params))
    path = Path(args.script) if args.script else sweep.sweep_dir / "launch" / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    print(f"sbatch {shlex.quote(str(path))}")
    return subprocess.run(["sbatch", str(path)], check=False).returncode
