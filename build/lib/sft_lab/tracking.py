"""Experiment tracking: W&B (offline by default) or none. It mirrors the run record, never the reverse.

One naming scheme for hundreds of runs: config keys as in the record (`lr`, `lora.r`, `data.name`),
metrics as `train/<name>` and `eval/<task>/<metric>`, tags from the ablation factors, and a job type
(train, baseline, trial).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def flatten(d: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + sep, sep))
        else:
            out[key] = v
    return out


def lora_label(config: dict[str, Any]) -> str:
    """`r8`, or `full` for full fine-tuning: as run names and tags show it."""
    return f"r{config['lora']['r']}" if config["lora"]["r"] else "full"


def tags(record) -> list[str]:
    """The factors a researcher filters by, as `key=value` tags."""
    c = record.config
    if c.get("baseline"):
        return ["baseline", f"model={c['model']['name']}"]
    out = [f"data={c['data']['name']}", f"template={c['template']['name']}", f"lora={lora_label(c)}", f"lr={c['lr']:g}"]
    return out + ([f"study={record.sweep['study']}"] if record.sweep else [])


def job_type(record) -> str:
    return "baseline" if record.config.get("baseline") else "trial" if record.sweep else "train"


class NoTracker:
    run_id = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def weights(self, folder: str | None, name: str) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


class WandbTracker(NoTracker):
    def __init__(self, cfg, record, runs_dir: str):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.wandb, self.cfg = wandb, cfg
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        config = {**flatten(record.config), "overrides": list(record.overrides or []),
                  **({f"sweep.{k}": v for k, v in record.sweep.items()} if record.sweep else {})}
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=record.group, name=record.name, mode=cfg.mode,
            dir=str(Path(runs_dir).resolve()), config=config, reinit="finish_previous", notes=record.run_dir,
            tags=tags(record), job_type=job_type(record),
        )
        self.run_id = self.run.id

    def log(self, metrics, step):
        self.run.log(metrics, step=step)

    def summary(self, values):
        for k, v in flatten(values, sep="/").items():
            self.run.summary[k] = v

    def table(self, name, columns, rows):
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)})

    def weights(self, folder, name):
        """The adapter (or full model) as a W&B artifact: on by default when online."""
        wanted = self.cfg.log_weights if self.cfg.log_weights is not None else self.cfg.mode == "online"
        if folder and wanted:
            artifact = self.wandb.Artifact(name=f"weights-{self.run.id}", type="model", metadata={"run": name})
            artifact.add_dir(folder)
            self.run.log_artifact(artifact)

    def finish(self, status):
        self.run.summary["status"] = status
        if status == "pruned":  # W&B has no pruned state: a tag, and the run ends cleanly
            self.run.tags = tuple(self.run.tags) + ("pruned",)
        self.run.finish(exit_code=0 if status in ("finished", "pruned") else 1)


def start_tracker(cfg, record, runs_dir: str):
    if cfg.backend == "none":
        return NoTracker()
    return WandbTracker(cfg, record, runs_dir)


def sample_rows(samples_file: Path) -> tuple[list[str], list[list[Any]]]:
    """A task's per-item results (samples/<task>.jsonl) as table columns and rows."""
    rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return columns, [[json.dumps(r.get(c)) if isinstance(r.get(c), (list, dict)) else r.get(c) for c in columns]
                     for r in rows]
