"""Collect run records (a runs folder, or a W&B project) into one pandas frame."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from sft_lab.record import ADDED_LATER, HOW_NOT_WHAT, CorruptRecord, RunRecord, read_record
from sft_lab.tracking import flatten

log = logging.getLogger(__name__)

GROUPS = ("model", "data", "template")  # config groups whose factor value is their `name`


@functools.cache
def _default(group: str, key: str) -> Any:
    """A key's value in runs recorded before it existed: ADDED_LATER's, or for a switch its config default."""
    import dataclasses

    from sft_lab import config as cfg

    if (group, key) in ADDED_LATER:
        return ADDED_LATER[(group, key)]
    groups = {"train": cfg.TrainConfig, "eval": cfg.EvalConfig, "model": cfg.ModelConfig, "lora": cfg.LoraConfig}
    field = {f.name: f for f in dataclasses.fields(groups[group])}[key]
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return getattr(value, "value", value)  # an enum's value, as recorded


def record_row(record: RunRecord, run_dir: str) -> dict[str, Any]:
    config = record.config
    row = {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(config).items()}
    for group, key in [*ADDED_LATER, *HOW_NOT_WHAT]:  # older records lack newer keys: not a factor that varies
        if isinstance(config.get(group), dict) and f"{group}.{key}" not in row:
            value = _default(group, key)
            row[f"{group}.{key}"] = json.dumps(value) if isinstance(value, list) else value
    for group in GROUPS:  # `data` means the data preset's name, as on the command line
        if isinstance(config.get(group), dict):
            row[group] = config[group].get("name")
    row["baseline"] = bool(config.get("baseline", False))
    row["group"] = record.group
    row["tuned_on"] = (record.sweep or {}).get("tuned_on")  # the items an ablation tuned this config on
    for task, metrics in (record.eval or {}).items():
        for metric, v in metrics.items():
            row[f"eval/{task}/{metric}"] = v.get("value")
            row[f"stderr/{task}/{metric}"] = v.get("stderr")
    train = record.train or {}
    row.update({"train.tokens_seen": train.get("tokens_seen"), "train.answer_tokens": train.get("answer_tokens"), "train.wall_s": train.get("wall_s"),
                "train.final_loss": train.get("final_loss"), "name": record.name, "status": record.status,
                "started": record.started, "ended": record.ended, "run_dir": run_dir, "fingerprint": record.fingerprint,
                "protocol": json.dumps(record.eval_protocol or {}, sort_keys=True)})
    return row


def collect(runs_dir: str | Path) -> tuple[pd.DataFrame, Counter]:
    """Finished runs as rows; failed, pruned and running ones counted, not kept."""
    rows, excluded = [], Counter()
    for path in sorted(Path(runs_dir).rglob("record.json")):
        if "previous" in path.parts or "by-name" in path.parts:  # moved aside by force=true; readable links
            continue
        try:
            record = read_record(path.parent)
        except CorruptRecord as e:
            log.warning("skipping %s", e)
            excluded["corrupt"] += 1
            continue
        if record.status != "finished":
            excluded[record.status] += 1
            continue
        rows.append(record_row(record, str(path.parent)))
    return pd.DataFrame(rows), excluded


def collect_wandb(path: str, group: str | None) -> tuple[pd.DataFrame, Counter]:
    """The same frame from a W&B project (ENTITY/PROJECT), via the public API; needs network."""
    import wandb

    filters = {"group": group} if group else {}
    rows, excluded = [], Counter()
    for run in wandb.Api().runs(path, filters=filters):
        if run.state != "finished":
            excluded[run.state] += 1
            continue
        config = dict(run.config)
        summary = dict(run.summary)
        row = {k: v for k, v in config.items()}
        for group_name in GROUPS:
            row[group_name] = config.get(f"{group_name}.name")
        row["baseline"] = bool(config.get("baseline", False))
        for k, v in summary.items():
            sep = "/" if k.startswith("eval/") else "." if k.startswith("eval.") else None  # "." before v0.2
            if sep and k.count(sep) >= 2:
                _, task, metric = k.split(sep, 2)
                row[f"eval/{task}/{metric}"] = v
                row[f"stderr/{task}/{metric}"] = summary.get(f"eval_stderr{sep}{task}{sep}{metric}")
        row.update({"train.tokens_seen": summary.get("train/tokens_seen", summary.get("train.tokens_seen")),
                    "train.wall_s": summary.get("train/wall_s", summary.get("train.wall_s")),
                    "status": "finished", "run_dir": None, "fingerprint": run.id,
                    "protocol": json.dumps({k: config.get(f"eval.{k}") for k in
                                            ("limit", "num_fewshot", "apply_chat_template")}, sort_keys=True)})
        rows.append(row)
    return pd.DataFrame(rows), excluded


def load_items(run_dir: str, task: str, metric: str) -> dict[tuple, Any]:
    """Per-item results of one run (from samples/<task>.jsonl): item key -> value.

    The key is (doc_id, doc_hash, prompt_hash), so two runs share a key only for the same item asked
    the same way. A value is a float (a bool counts 0/1), or a pair whose aggregate is a ratio of sums:
    (bits, bytes) for bits_per_byte, and (followed, instructions) for a list of per-instruction booleans
    (IFEval's instruction-level metrics, which pool every instruction of every prompt).
    """
    path = Path(run_dir) / "samples" / f"{task}.jsonl"
    if not path.is_file():
        return {}
    items: dict[tuple, Any] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        key = (row["doc_id"], row.get("doc_hash") or json.dumps(row.get("target")), row.get("prompt_hash"))
        value = row.get(metric)
        if metric == "bits_per_byte" and isinstance(value, list) and len(value) == 2:
            items[key] = (-float(value[0]) / math.log(2), float(value[1]))
        elif isinstance(value, list) and value and all(isinstance(x, (bool, int)) for x in value):
            items[key] = (float(sum(value)), float(len(value)))
        elif isinstance(value, (int, float)):
            items[key] = float(value)
    return items
