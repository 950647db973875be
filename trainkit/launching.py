"""Rendering launch scripts: the templates shipped in the package (``launch/`` links to them),
the ``#SBATCH`` options every sbatch-rendering command shares, and the torchrun command line.

Used by ``trainkit launch`` (torchrun, SLURM) and ``trainkit launch --sweep`` (a SLURM array
job). Every value that reaches a shell is quoted with :func:`shlex.quote` or checked to be a
plain word.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from trainkit.errors import ConfigError


def template(name: str) -> Path:
    """Path of a launch template shipped in the package (``torchrun.sh``, ``slurm.sbatch``)."""
    return Path(str(resources.files("trainkit") / "templates" / name))


SBATCH_KEYS = ("job-name", "nodes", "ntasks-per-node", "cpus-per-task", "time", "partition", "gpus-per-node")


def render_sbatch(text: str, settings: dict[str, str], argv: Sequence[str], python: str | None = None) -> str:
    """The sbatch template with ``#SBATCH --key=value`` lines set from ``settings``, the recipe
    and overrides baked in as quoted positional arguments, and ``python`` (the interpreter the
    launch runs under) as the one that runs trainkit in the job.

    >>> print(render_sbatch("#SBATCH --nodes=1\\nset -e\\nRECIPE=$1", {"nodes": "2"}, ["r.yaml", "--x=a b"], "/v/bin/python"), end="")
    #SBATCH --nodes=2
    set -- r.yaml '--x=a b'
    TRAINKIT_PYTHON="${TRAINKIT_PYTHON:-/v/bin/python}"
    set -e
    RECIPE=$1
    """
    lines = text.splitlines()
    for key, value in settings.items():
        line = f"#SBATCH --{key}={value}"
        idx = [i for i, s in enumerate(lines) if re.match(rf"#SBATCH --{re.escape(key)}=", s)]
        if idx:
            lines[idx[0]] = line
        else:
            last = max(i for i, s in enumerate(lines) if s.startswith("#SBATCH"))
            lines.insert(last + 1, line)
    # arguments go right after the #SBATCH block (sbatch stops reading directives at the first command)
    last = max(i for i, s in enumerate(lines) if s.startswith("#SBATCH"))
    head = ["set -- " + shlex.join(argv)]
    if python:
        # sbatch runs the script with the submitting shell's PATH, where `trainkit` may not be
        head.append(f'TRAINKIT_PYTHON="${{TRAINKIT_PYTHON:-{_quoted_in_dquotes(python)}}}"')
    lines[last + 1:last + 1] = head
    return "\n".join(lines) + "\n"


def _quoted_in_dquotes(value: str) -> str:
    """``value`` safe inside a double-quoted shell word."""
    return re.sub(r'([\\"$`])', r"\\\1", value)


def torchrun_command(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """``env VAR=... bash torchrun.sh RECIPE overrides...`` as an argument list."""
    return ["env", *(f"{k}={v}" for k, v in env.items()), "bash", str(template("torchrun.sh")), *argv]


def torchrun_line(argv: Sequence[str], env: dict[str, str]) -> str:
    """The command line torchrun.sh will run (its ``DRY_RUN``), for ``launch --dry-run`` to show.

    Raises:
        ConfigError: the script refuses the settings (its message).
    """
    import subprocess

    out = subprocess.run(torchrun_command(argv, {**env, "DRY_RUN": "1"}), capture_output=True, text=True)
    if out.returncode != 0:
        raise ConfigError(out.stderr.strip() or f"torchrun.sh exited with {out.returncode}", "launch")
    return out.stdout.strip()


def add_sbatch_options(group: Any, job_name: str, script_default: str) -> None:
    """The options :func:`sbatch_settings` reads, for every command that renders an sbatch script."""
    group.add_argument("--job-name", default=job_name)
    group.add_argument("--time", default="01:00:00")
    group.add_argument("--partition", default=None)
    group.add_argument("--cpus-per-task", type=int, default=None,
                       help="default: the CPUs of the partition's nodes (sinfo) / tasks per node")
    group.add_argument("--gpus-per-node", type=int, default=None,
                       help="default: one per task where the partition's nodes have GPUs (sinfo), else none")
    group.add_argument("--script", default=None, help=f"where to write the sbatch script (default: {script_default})")


@dataclass
class Nodes:
    """What the smallest node of a partition offers, as ``sinfo`` reports it."""

    partition: str
    cpus: int
    gpus: int


def parse_sinfo(text: str, partition: str | None) -> Nodes | None:
    """``sinfo -h -o "%P %c %G"`` output -> the named (or default, ``*``) partition's smallest node.

    >>> parse_sinfo("debug* 2 (null)\\ngpu 64+ gpu:a100:8(S:0-1)\\ngpu 32 gpu:a100:4", "gpu")
    Nodes(partition='gpu', cpus=32, gpus=4)
    >>> parse_sinfo("debug* 2 (null)", None)
    Nodes(partition='debug', cpus=2, gpus=0)
    """
    found: list[tuple[int, int]] = []
    name = partition
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        part, cpus, gres = fields[0], fields[1], fields[2]
        default = part.endswith("*")
        part = part.rstrip("*")
        if (partition is None and default) or part == partition:
            name = part
            gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[\w.-]+)?:(\d+)", gres))
            found.append((int(cpus.rstrip("+")), gpus))
    if not found or name is None:
        return None
    return Nodes(name, min(c for c, _ in found), min(g for _, g in found))


def query_nodes(partition: str | None) -> Nodes | None:
    """The partition's smallest node from ``sinfo``; None when SLURM is not reachable from here."""
    import subprocess

    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %c %G"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_sinfo(out.stdout, partition) if out.returncode == 0 else None


def job_resources(args: argparse.Namespace, tasks_per_node: int, nodes: Nodes | None) -> dict[str, str]:
    """``cpus-per-task`` and ``gpus-per-node`` for the job: the given ones checked against the
    partition's nodes, else derived from them (``{}`` where neither is known).

    Raises:
        ConfigError: a request no node of the partition can hold, with the numbers.
    """
    out: dict[str, str] = {}
    cpus, gpus = args.cpus_per_task, args.gpus_per_node
    if nodes is not None:
        where = f"nodes of partition {nodes.partition} have {nodes.cpus} CPUs and {nodes.gpus} GPUs (sinfo)"
        if tasks_per_node > nodes.cpus:
            raise ConfigError(f"--devices {tasks_per_node} tasks per node, but {where}", "launch")
        if cpus is None:
            cpus = max(1, nodes.cpus // tasks_per_node)
        elif cpus * tasks_per_node > nodes.cpus:
            raise ConfigError(
                f"--cpus-per-task {cpus} x {tasks_per_node} tasks per node = {cpus * tasks_per_node} CPUs, but {where} "
                f"(the job would stay pending forever): use --cpus-per-task {max(1, nodes.cpus // tasks_per_node)} or less",
                "launch")
        if gpus is None:
            gpus = tasks_per_node if nodes.gpus else 0
        if gpus > nodes.gpus:
            raise ConfigError(f"--gpus-per-node {gpus}, but {where}", "launch")
    if cpus is not None:
        out["cpus-per-task"] = str(cpus)
    if gpus:
        out["gpus-per-node"] = str(gpus)
    return out


def sbatch_settings(args: argparse.Namespace, specific: dict[str, str]) -> dict[str, str]:
    """``#SBATCH`` values from the common launch options plus ``specific`` ones, each checked to
    be a plain word, so nothing can break out of its directive line.

    Raises:
        ConfigError: a value with characters other than letters, digits and ``. : - _ %``.
    """
    settings = {"job-name": args.job_name, **specific, "time": args.time}
    if args.partition:
        settings["partition"] = args.partition
    for key, value in settings.items():
        if not re.fullmatch(r"[\w.:\-%]+", value):
            raise ConfigError(f"--{key} must be a plain word (letters, digits, . : - _ %), got {value!r}", "launch")
    return settings
