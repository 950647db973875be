"""``trainkit launch``: render and start a torchrun command or an sbatch script from the
templates in ``launch/`` (``trainkit/templates/``), after printing the launch plan;
``trainkit launch --sweep``: a SLURM array job whose tasks each run one trial of a shared study.

The recipe is parsed and checked here first (exit 2 on bad input), so a broken recipe never
reaches a cluster queue. Every value that reaches a shell is quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from trainkit.errors import ConfigError
from trainkit.commands.common import join_overrides
from trainkit.launching import (
    add_sbatch_options, job_resources, query_nodes, render_sbatch, sbatch_settings, template, torchrun_command, torchrun_line,
)
from trainkit.secrets import find_secret


@dataclass
class Plan:
    """What a launch will do, computed from the recipe and the world it is launched in."""

    nodes: int
    devices: int
    batch_size: int
    accumulate: int
    train_samples: int
    lr: float
    lr_note: str
    experiment_dir: Path

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accumulate

    @property
    def steps_per_epoch(self) -> int:
        # the distributed sampler pads every rank to ceil(n / world) samples
        per_rank = math.ceil(self.train_samples / self.world_size)
        return math.ceil(math.ceil(per_rank / self.batch_size) / self.accumulate)

    def describe(self) -> str:
        return (
            f"world size {self.world_size} = {self.nodes} node(s) x {self.devices} device(s); "
            f"global batch {self.global_batch} = {self.batch_size} x {self.world_size} x {self.accumulate} accum; "
            f"{self.steps_per_epoch} steps/epoch over {self.train_samples} training samples; lr {self.lr:g} ({self.lr_note})"
        )


def make_plan(recipe: str, overrides: Sequence[str], nodes: int, devices: int) -> Plan:
    """Parse and check the recipe (as ``trainkit fit`` would) and compute the launch plan."""
    from trainkit.runner import TrainkitCLI

    from trainkit.optim.scaling import check_lr_scaling, lr_factor

    cli = TrainkitCLI(["fit", "--config", recipe, *overrides], run_stage=False)
    dm, model = cli.datamodule, cli.model
    accumulate = int(cli.trainer.accumulate_grad_batches)
    rule, base = check_lr_scaling(model.lr_scaling)
    lr = float(model.optimizer_spec.get("lr", 1e-3))
    factor = lr_factor(rule, dm.batch_size * nodes * devices * accumulate, base)
    return Plan(
        nodes=nodes,
        devices=devices,
        batch_size=dm.batch_size,
        accumulate=accumulate,
        train_samples=len(dm.splits["train"]),
        lr=lr * factor,
        lr_note=f"recipe {lr:g}, {rule} scaling, base {base}" if rule != "none" else "recipe lr, no scaling",
        experiment_dir=cli.run_dir.path.parent,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainkit launch",
        description="Print the launch plan, render the torchrun command or sbatch script, and start it.",
        epilog="Anything else (--model.optimizer.lr=0.1 ...) is passed to `trainkit fit` as an override.",
    )
    p.add_argument("--config", required=True, help="recipe YAML file")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--torchrun", action="store_true", help="start torchrun on this node (default)")
    how.add_argument("--slurm", action="store_true", help="render an sbatch script and submit it")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--devices", type=int, default=None,
                   help="processes (devices) per node (default 1; --slurm: the GPUs of the partition's nodes, if any)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the command or script; start nothing")
    p.add_argument("--sweep", action="store_true", help="a SLURM array job of `trainkit sweep` trials (see --sweep --help)")
    t = p.add_argument_group("torchrun")
    t.add_argument("--master-addr", default="127.0.0.1")
    t.add_argument("--master-port", type=int, default=29500)
    t.add_argument("--rdzv-endpoint", default=None, help="host:port of the c10d rendezvous (default: master addr:port)")
    t.add_argument("--run-id", default=None, help="same on every node; names the run dir")
    t.add_argument("--max-restarts", type=int, default=0)
    add_sbatch_options(p.add_argument_group("slurm"), "trainkit", "a file beside the runs")
    return p


def main(argv: Sequence[str]) -> int:
    """``trainkit launch``: see :func:`parser`."""
    if "--sweep" in argv:  # a SLURM array job of sweep trials
        return cmd_launch_sweep([a for a in argv if a != "--sweep"])
    args, rest = parser().parse_known_args(list(argv))
    overrides = join_overrides(rest, "launch")
    for override in overrides:
        if name := find_secret(override):
            raise ConfigError(
                f"an override carries the value of ${name}; secrets are never written into launch commands or "
                f"scripts: export it and let the job inherit the environment",
                "launch",
            )
    nodes = query_nodes(args.partition) if args.slurm else None
    if args.devices is None:
        # SLURM: one task per GPU of the partition's nodes where sinfo reports GPUs
        args.devices = nodes.gpus if nodes is not None and nodes.gpus else 1
    if args.nodes < 1 or args.devices < 1:
        raise ConfigError(f"--nodes and --devices must be >= 1, got {args.nodes} and {args.devices}", "launch")
    if not args.slurm and args.nodes > 1 and not args.run_id:
        raise ConfigError(
            f"--nodes {args.nodes} with torchrun needs --run-id: the same value on every node names the shared "
            f"run dir and the rendezvous", "launch")
    if args.slurm:  # checked before the plan: nothing is printed for a request that cannot run
        resources = job_resources(args, args.devices, nodes)
        settings = sbatch_settings(args, {"nodes": str(args.nodes), "ntasks-per-node": str(args.devices), **resources})
    plan = make_plan(args.config, overrides, args.nodes, args.devices)
    print(f"plan: {plan.describe()}")
    fit_args = [args.config, *overrides]
    if args.slurm:
        if nodes is None and args.cpus_per_task is None:
            print("note: sinfo is not reachable from here; without --cpus-per-task each task gets SLURM's default of one CPU")
        script = render_sbatch(template("slurm.sbatch").read_text(), settings, fit_args, _python())
        if args.dry_run:
            print(script, end="")
            return 0
        path = Path(args.script) if args.script else _script_path(plan.experiment_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        print(f"sbatch {shlex.quote(str(path))}")
        return subprocess.run(["sbatch", str(path)], check=False).returncode
    env = {
        "NPROC": str(args.devices),
        "NNODES": str(args.nodes),
        "MAX_RESTARTS": str(args.max_restarts),
        "PYTHON": os.environ.get("TRAINKIT_PYTHON", _python()),
    }
    if args.run_id:
        env["RUN_ID"] = args.run_id
    if args.rdzv_endpoint:
        env["RDZV_ENDPOINT"] = args.rdzv_endpoint
    else:
        env.update(MASTER_ADDR=args.master_addr, MASTER_PORT=str(args.master_port))
    # the command line torchrun.sh runs, as it will run it (its DRY_RUN)
    print(torchrun_line(fit_args, env))
    if args.dry_run:
        return 0
    return subprocess.run(torchrun_command(fit_args, env), check=False).returncode


def _python() -> str:
    import sys

    return sys.executable


def _script_path(experiment_dir: Path) -> Path:
    import time

    return experiment_dir / "launch" / f"slurm-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"


# -- launch --sweep ---------------------------------------------------------------------------
def sweep_parser() -> argparse.ArgumentParser:
    from trainkit.sweep.plan import parser as sweep_plan_parser

    p = sweep_plan_parser()
    p.prog = "trainkit launch --sweep"
    p.description = "Render a SLURM array job: N tasks, each `trainkit sweep --study NAME --trials 1` on one storage."
    p.set_defaults(workers=None)
    s = p.add_argument_group("slurm (--workers K: at most K tasks at once)")
    add_sbatch_options(s, "trainkit-sweep", "in the sweep dir")
    s.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    return p


def cmd_launch_sweep(argv: Sequence[str]) -> int:
    """Check, render, write and submit the array job (``--dry-run``: print it only).

    The recipe and space are checked here (exit 2 before anything reaches the queue); the tasks
    get the study name and an explicit storage, so they all join the same study.
    """
    import time

    from trainkit.sweep.plan import resolve
    from trainkit.sweep.space import dump_space
    from trainkit.sweep.study import grid_size

    args, rest = sweep_parser().parse_known_args(list(argv))
    overrides = join_overrides(rest, "launch")
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
    resources = job_resources(args, 1, query_nodes(args.partition))
    settings = sbatch_settings(args, {"array": f"0-{trials - 1}" + (f"%{workers}" if workers else ""), **resources})
    script = render_sbatch(template("sweep.sbatch").read_text(), settings, task_args, _python())
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
