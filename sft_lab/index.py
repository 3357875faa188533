"""The runs folder for people: runs/index.csv (one row per run) and runs/by-name/<run name> links.

The fingerprint folders stay the source of truth; these are rebuilt from records whenever a run
starts or ends, under a lock, and written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from sft_lab.files import atomic_write
from sft_lab.record import RunRecord

INDEX = "index.csv"
BY_NAME = "by-name"
FACTORS = ("data.name", "template.name", "lora.r", "lr", "seed", "train.max_steps", "baseline")


def _factor(config: dict, key: str):
    node = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def index_row(record: RunRecord) -> dict[str, str]:
    row = {"name": record.name, "status": record.status, "fingerprint": record.fingerprint[:16],
           **{k: _factor(record.config, k) for k in FACTORS}}
    for task, metrics in sorted((record.eval or {}).items()):
        for metric, v in sorted(metrics.items()):
            row[f"{task}/{metric}"] = None if v.get("value") is None else round(v["value"], 4)
    train = record.train or {}
    row.update({"final_loss": train.get("final_loss"), "wall_s": train.get("wall_s"), "path": record.run_dir})
    return {k: "" if v is None else str(v) for k, v in row.items()}


def update(runs_dir: str | Path, record: RunRecord) -> None:
    """Put the record's row into runs/index.csv (replacing its earlier one) and link runs/by-name/<name>."""
    from filelock import FileLock

    runs_dir = Path(runs_dir)
    with FileLock(runs_dir / f".{INDEX}.lock"):
        path = runs_dir / INDEX
        rows = list(csv.DictReader(path.open())) if path.is_file() else []
        rows = [r for r in rows if r.get("fingerprint") != record.fingerprint[:16]] + [index_row(record)]
        rows.sort(key=lambda r: (r["name"], r["fingerprint"]))
        columns = list(dict.fromkeys(k for r in rows for k in r))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, out.getvalue())
        _link(runs_dir, record)


def _link(runs_dir: Path, record: RunRecord) -> None:
    folder = runs_dir / BY_NAME
    folder.mkdir(exist_ok=True)
    target = os.path.relpath(record.run_dir, folder)
    link = folder / record.name
    if link.is_symlink() and os.readlink(link) != target:  # another config with the same readable name
        link = folder / f"{record.name}-{record.fingerprint[:8]}"
    if not link.is_symlink():
        tmp = folder / f".{link.name}.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
