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
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from trainkit.errors import ConfigError


def template(name: str) -> Path:
    """Path of a launch template shipped in the package (``torchrun.sh``, ``slurm.sbatch``)."""
    return Path(str(resources.files("trainkit") / "templates" / name))


SBATCH_KEYS = ("job-name", "nodes", "ntasks-per-node", "cpus-per-task", "time", "partition", "gpus-per-node")


def render_sbatch(text: str, settings: dict[str, str], argv: Sequence[str]) -> str:
    """The sbatch template with ``#SBATCH --key=value`` lines set from ``settings`` and the
    recipe and overrides baked in as quoted positional arguments.

    >>> print(render_sbatch("#SBATCH --nodes=1\\nset -e\\nRECIPE=$1", {"nodes": "2"}, ["r.yaml", "--x=a b"]), end="")
    #SBATCH --nodes=2
    set -- r.yaml '--x=a b'
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
    lines.insert(last + 1, "set -- " + shlex.join(argv))
    return "\n".join(lines) + "\n"


def torchrun_command(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """``env VAR=... bash torchrun.sh RECIPE overrides...`` as an argument list."""
    return ["env", *(f"{k}={v}" for k, v in env.items()), "bash", str(template("torchrun.sh")), *argv]


def add_sbatch_options(group: Any, job_name: str, script_default: str) -> None:
    """The options :func:`sbatch_settings` reads, for every command that renders an sbatch script."""
    group.add_argument("--job-name", default=job_name)
    group.add_argument("--time", default="01:00:00")
    group.add_argument("--partition", default=None)
    group.add_argument("--cpus-per-task", type=int, default=4)
    group.add_argument("--gpus-per-node", type=int, default=0)
    group.add_argument("--script", default=None, help=f"where to write the sbatch script (default: {script_default})")


def sbatch_settings(args: argparse.Namespace, specific: dict[str, str]) -> dict[str, str]:
    """``#SBATCH`` values from the common launch options plus ``specific`` ones, each checked to
    be a plain word, so nothing can break out of its directive line.

    Raises:
        ConfigError: a value with characters other than letters, digits and ``. : - _ %``.
    """
    settings = {"job-name": args.job_name, **specific, "cpus-per-task": str(args.cpus_per_task), "time": args.time}
    if args.partition:
        settings["partition"] = args.partition
    if args.gpus_per_node:
        settings["gpus-per-node"] = str(args.gpus_per_node)
    for key, value in settings.items():
        if not re.fullmatch(r"[\w.:\-%]+", value):
            raise ConfigError(f"--{key} must be a plain word (letters, digits, . : - _ %), got {value!r}", "launch")
    return settings
