"""The runs folder for people: runs/index.csv (one row per run) and runs/by-name/<run name> links.

The fingerprint folders stay the source of truth; these are rebuilt from records whenever a run
starts or ends, under a lock, and written atomically. They are a convenience: when they cannot be
written the run warns and goes on, and a malformed index.csv is rebuilt from the records.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from pathlib import Path

from sft_lab.files import atomic_write
from sft_lab.record import RunRecord

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")
MAX_NAME = 180


def safe_name(text: str, limit: int = MAX_NAME) -> str:
    """One path component from any text: only letters, digits and ._+=- (the rest becomes _), no leading
    dot (so never . or ..), at most `limit` characters."""
    name = _UNSAFE.sub("_", text).lstrip(".")[:limit]
    return name or "_"

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
    """Put the record's row into runs/index.csv (replacing its earlier one) and link runs/by-name/<name>.
    Never raises: a failure here is logged as a warning and the run goes on."""
    try:
        _update(Path(runs_dir), record)
    except Exception as e:  # noqa: BLE001 - derived files must never block or fail a run
        log.warning("runs index / by-name link not updated (%s: %s); the run's record is unaffected",
                    type(e).__name__, e)


def _read_index(path: Path) -> list[dict]:
    """The index rows, or None when the file is not an index this module wrote."""
    try:
        rows = list(csv.DictReader(path.open(newline="")))
    except (csv.Error, UnicodeDecodeError):
        return None
    if rows and any(not r.get("fingerprint") or None in r for r in rows):
        return None
    return rows


def rebuild_rows(runs_dir: Path) -> list[dict]:
    """Index rows from the run folders' records (the source of truth)."""
    from sft_lab.record import CorruptRecord, read_record

    rows = []
    for path in sorted(runs_dir.glob("*/record.json")):
        try:
            found = read_record(path.parent)
        except CorruptRecord:
            continue
        if found is not None:
            rows.append(index_row(found))
    return rows


def _update(runs_dir: Path, record: RunRecord) -> None:
    from filelock import FileLock

    with FileLock(runs_dir / f".{INDEX}.lock"):
        path = runs_dir / INDEX
        rows = _read_index(path) if path.is_file() else []
        if rows is None:
            log.warning("%s is malformed: rebuilt from the run records", path)
            rows = rebuild_rows(runs_dir)
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
    """by-name/<name> -> the run folder. Only ever makes or keeps symlinks inside by-name/, and never replaces
    an entry it did not make (a file or folder there is left alone, with a warning)."""
    folder = runs_dir / BY_NAME
    folder.mkdir(exist_ok=True)
    target = os.path.relpath(record.run_dir, folder)
    name = safe_name(record.name or "")
    for candidate in (name, safe_name(f"{name[:MAX_NAME - 9]}-{record.fingerprint[:8]}")):
        link = folder / candidate
        if link.parent.resolve() != folder.resolve():  # cannot happen with a safe name; checked all the same
            raise ValueError(f"run name {record.name!r} would link outside {folder}")
        if link.is_symlink() and os.readlink(link) == target:
            return
        if not os.path.lexists(link):
            tmp = folder / f".{candidate[:MAX_NAME]}.tmp{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            if os.path.lexists(link):  # made meanwhile by another process: leave it
                tmp.unlink()
            else:
                os.rename(tmp, link)
            return
        # taken: another config's link with the same readable name, or an entry sft-lab did not make
    log.warning("by-name: %s and its fingerprinted form are taken by other entries; no link made for %s",
                name, record.run_dir)
