"""Experiment tracking: W&B (offline by default) or none. It mirrors the run record, never the reverse."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class NoTracker:
    run_id = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


class WandbTracker(NoTracker):
    def __init__(self, cfg, name: str, group: str | None, config: dict[str, Any], run_dir: Path, runs_dir: str):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.wandb = wandb
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        # The ablation factors keep their config names (lr, lora.r, data.name, ...), flattened.
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=group, name=name, mode=cfg.mode,
            dir=str(Path(runs_dir).resolve()), config=flatten(config), reinit="finish_previous",
            notes=str(run_dir),
        )
        self.run_id = self.run.id

    def log(self, metrics, step):
        self.run.log(metrics, step=step)

    def summary(self, values):
        for k, v in flatten(values).items():
            self.run.summary[k] = v

    def table(self, name, columns, rows):
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)})

    def finish(self, failed=False):
        self.run.finish(exit_code=1 if failed else 0)


def start_tracker(cfg, name: str, group: str | None, config: dict[str, Any], run_dir: Path, runs_dir: str):
    if cfg.backend == "none":
        return NoTracker()
    return WandbTracker(cfg, name, group, config, run_dir, runs_dir)
