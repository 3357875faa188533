"""Read a W&B offline run file (run-*.wandb) as the W&B service wrote it: its records, parsed.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB
blocks of chunks (crc32 4 bytes, length 2, type 1: full, first, middle, last), each record a
`wandb_internal_pb2.Record`. Tests use it to check what sft-lab sent to W&B without a server.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # block trailer: padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def summary(path: Path) -> dict:
    """The run as W&B shows it: config, tags, job type, history keys, final summary, exit code, artifacts."""
    run = {"config": {}, "tags": [], "job_type": None, "history_keys": set(), "summary": {}, "exit_code": None,
           "artifacts": [], "tables": set()}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
            run["tags"] = list(rec.run.tags) or run["tags"]
            run["job_type"] = rec.run.job_type or run["job_type"]
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                run["history_keys"].add(key)
                if '"_type": "table' in item.value_json or '"_type":"table' in item.value_json:
                    run["tables"].add(key)
        elif kind == "summary":
            for item in rec.summary.update:
                run["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "exit":
            run["exit_code"] = rec.exit.exit_code
        elif kind == "artifact":
            run["artifacts"].append((rec.artifact.type, rec.artifact.name))
    return run
