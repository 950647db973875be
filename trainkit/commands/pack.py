"""``trainkit pack --config R.yaml [overrides] --out DIR [--workers N]``: the recipe's splits
as LitData shards for ``data.dataset: streaming`` (:mod:`trainkit.data.packing`).

The recipe is parsed and its data set up exactly as ``trainkit fit`` would (same seeded,
stratified split indices, statistics of the training split), so a run on the shards trains on
the same samples as a run on the recipe's own source. ``--out`` is a new folder or
``s3://bucket/prefix`` (the AWS environment names the endpoint and the credentials); pack never
writes into one that exists. No run dir is made.

Train from the shards::

    trainkit fit --config R.yaml --data.dataset=streaming --data.root=DIR
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from trainkit.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainkit pack",
        description="Write the recipe's splits as LitData shards; other options are recipe overrides (--config R.yaml ...).",
        allow_abbrev=False,
    )
    p.add_argument("--out", required=True, help="a new folder, or s3://bucket/prefix (endpoint and credentials from AWS_*)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes (default: the CPU count)")
    p.add_argument("--chunk-bytes", default="64MB", help="LitData chunk size (default 64MB)")
    return p


def main(argv: Sequence[str]) -> int:
    """Pack the splits; prints what was written. Returns the exit code."""
    from trainkit.commands.common import command_options

    opts, rest = command_options(_parser(), argv)
    if opts.workers < 1:
        raise ConfigError(f"must be >= 1, got {opts.workers}", "--workers")
    from trainkit.data.packing import check_out, pack

    check_out(opts.out)  # before the recipe's data are read: a refused --out costs nothing
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        raise ConfigError("pack needs the recipe: --config R.yaml", "--config")
    from trainkit.runner import TrainkitCLI, finish_wandb

    try:
        cli = TrainkitCLI(["fit", *rest], run_stage=False)  # parses and sets up the data, runs nothing
    finally:
        finish_wandb()
    dm = cli.datamodule
    if dm.dataset_name == "streaming":
        raise ConfigError("the recipe already reads packed shards; pack its own source instead", "data.dataset")
    done = pack(dm, opts.out, cli.recipe_text, workers=opts.workers, chunk_bytes=opts.chunk_bytes)
    sizes = ", ".join(f"{s} {n}" for s, n in done.sizes.items())
    print(f"packed {dm.dataset_name}: {sizes} samples in {done.seconds:.1f} s")
    print(f"train from it: trainkit fit --config <recipe> --data.dataset=streaming --data.root={opts.out}")
    print(f"shards: {opts.out}")
    return 0
