"""Read the records of an offline W&B run (``run-<id>.wandb``) back from disk.

wandb 0.31 ships no Python reader for these files, so this parses the format directly: a
7-byte header (``:W&B``, magic 0xBEE1, version 0) and then LevelDB-style log blocks of 32 KiB,
each record chunk with a 7-byte header (crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST),
whose payloads are serialized ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, f"not a W&B file: {path}"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # trailer padding of a block
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):  # a writer killed mid-record (e.g. a requeued job)
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a file
            break
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_run(run_dir: Path) -> dict[str, Any]:
    """All offline W&B runs under ``run_dir/wandb``: ids, config, history rows, summary."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[str, Any] = {"ids": set(), "config": {}, "history": [], "summary": {}, "files": []}
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    out["files"] = files
    for f in files:
        for payload in iter_payloads(f):
            rec = pb.Record()
            rec.ParseFromString(payload)
            which = rec.WhichOneof("record_type")
            if which == "run":
                out["ids"].add(rec.run.run_id)
                for item in rec.run.config.update:
                    out["config"][item.key] = json.loads(item.value_json)
            elif which == "config":
                for item in rec.config.update:
                    out["config"][item.key] = json.loads(item.value_json)
            elif which == "history":
                out["history"].append(
                    {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in rec.history.item}
                )
            elif which == "summary":
                for item in rec.summary.update:
                    out["summary"]["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
                for item in rec.summary.remove:  # a removed entry takes its nested parts with it
                    gone = "/".join(item.nested_key) or item.key
                    out["summary"] = {k: v for k, v in out["summary"].items() if k != gone and not k.startswith(gone + "/")}
    return out
