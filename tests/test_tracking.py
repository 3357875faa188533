"""W&B as a researcher browses it, read back from the offline run files the W&B service wrote."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import TINY, compose, run_cli
from wandb_files import summary


def offline_runs(runs: Path) -> dict[str, dict]:
    """Each offline run by job type, read once its exit record is on disk (the W&B service writes the file
    from its own process, so a finished run's last records may land a moment after finish() returns)."""
    out = {}
    for path in sorted(runs.glob("wandb/offline-run-*/run-*.wandb")):
        run, deadline = summary(path), time.monotonic() + 30
        while run["exit_code"] is None and time.monotonic() < deadline:
            time.sleep(0.5)
            run = summary(path)
        out[run["job_type"]] = run
    return out


@pytest.mark.e2e
def test_train_and_base_runs_are_tagged_typed_and_complete_in_wandb(tmp_path):
    runs = tmp_path / "runs"
    common = [*TINY, "tracking=wandb", "tracking.log_weights=true", f"paths.runs_dir={runs}"]
    assert run_cli([*common, "lr=1e-4"], cwd=tmp_path).returncode == 0
    assert run_cli([*common, "baseline=true"], cwd=tmp_path).returncode == 0
    by_type = offline_runs(runs)
    train, base = by_type["train"], by_type["baseline"]
    assert set(train["tags"]) == {"data=alpaca", "template=alpaca", "lora=r8", "lr=0.0001"}
    assert "lr=1e-4" in train["config"]["overrides"] and train["config"]["lr"] == 1e-4
    assert train["config"]["lora.r"] == 8  # config keys named as in the record and the tables
    record = json.loads(next(p for p in runs.glob("*/record.json")
                             if not json.loads(p.read_text())["config"]["baseline"]).read_text())
    # one naming scheme: train/<name>, eval/<task>/<metric>
    assert train["summary"]["eval/arc_easy/acc"] == record["eval"]["arc_easy"]["acc"]["value"]
    assert train["summary"]["train/final_loss"] == record["train"]["final_loss"]
    assert train["summary"]["status"] == "finished" and train["exit_code"] == 0
    assert {"train/loss", "train/learning_rate"} <= train["history_keys"]
    assert not any(k.startswith("eval.") for k in train["summary"])
    assert {"eval/samples/arc_easy/_type", "eval/samples/heldout/_type"} <= train["history_keys"]  # per-item tables
    assert ("model", f"weights-{record['wandb_run_id']}") in train["artifacts"]
    # the base model is logged like any other run
    assert "baseline" in base["tags"] and "eval/arc_easy/acc" in base["summary"]


@pytest.mark.e2e
def test_a_pruned_trial_is_marked_pruned_not_finished(tmp_path):
    from sft_lab.record import RunRecord
    from sft_lab.tracking import start_tracker

    cfg = compose([*TINY, "tracking=wandb", f"paths.runs_dir={tmp_path}"])
    from sft_lab.config import to_container

    record = RunRecord(status="running", fingerprint="f", run_dir=str(tmp_path / "x"), config=to_container(cfg),
                       name="trial-run", group="study", sweep={"study": "study", "trial": 3, "state": "running"})
    tracker = start_tracker(cfg.tracking, record, str(tmp_path))
    tracker.finish("pruned")
    [run] = offline_runs(tmp_path).values()
    assert run["job_type"] == "trial" and "study=study" in run["tags"] and "pruned" in run["tags"]
    assert run["config"]["sweep.trial"] == 3 and run["summary"]["status"] == "pruned"
