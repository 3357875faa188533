"""One trial: suggested overrides -> composed configs (one per seed) -> the run pipeline -> the study told.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from sft_lab.sweep.queue import (
    Heartbeat,
    claim_queued_trial,
    open_storage,
    open_study,
    storage_lock,
    stored_user_attrs,
)
from sft_lab.sweep.spec import SweepSpec, trial_overrides

log = logging.getLogger("sft_lab.sweep")


def suggest(trial, spec: SweepSpec) -> list[str]:
    overrides = []
    for key, p in spec.space.items():
        if p.type == "float":
            v = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            v = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            v = trial.suggest_categorical(key, list(p.choices))
        overrides.append(f"{key}={v}")
    return overrides


def objective_value(record, metrics: list[str]) -> float:
    values = []
    for name in metrics:
        task, _, metric = name.rpartition(".")
        values.append(record.eval[task][metric]["value"])
    return sum(values) / len(values)


def run_trial(trial, spec: SweepSpec, extra: list[str], study_name: str, procs: int = 1) -> None:
    """One trial: every seed through the run pipeline (a torchrun job over `procs` processes when above 1);
    tells the study complete / pruned / failed."""
    import optuna

    from sft_lab import record as rec
    from sft_lab.config import compose, expand_heldout, to_container

    sign = 1 if spec.objective.direction == "minimize" else -1
    values, state, started, params = [], optuna.trial.TrialState.COMPLETE, time.perf_counter(), []

    def on_eval(heldout_loss: float, step: int) -> bool:
        trial.report(sign * heldout_loss, step)  # held-out loss, sign-matched to the study's direction
        return trial.should_prune()

    pruned = False
    try:
        params = suggest(trial, spec)
        for i, seed in enumerate(spec.seeds):
            overrides = [*trial_overrides(spec, extra), *params, f"seed={seed}"]
            cfg = compose(overrides)
            expand_heldout(cfg.eval)  # as pipeline.run does before the fingerprint
            run_dir = rec.run_dir_for(cfg.paths.runs_dir, rec.fingerprint(to_container(cfg)))
            trial.set_user_attr(f"run_dir_seed{seed}", str(run_dir))
            sweep_info = {"study": study_name, "trial": trial.number, "state": "running"}
            if procs > 1:
                record = run_distributed(overrides, procs, run_dir, study_name, sweep_info)
            else:
                record = run_when_free(cfg, study_name, sweep_info, on_eval if i == 0 else None)
            if record.status == "pruned":  # pruned now, or a reused pruned record: never re-run as if new
                pruned = True
                break
            values.append(objective_value(record, list(spec.objective.metrics)))
        if pruned:
            state = optuna.trial.TrialState.PRUNED
            trial.study.tell(trial, state=state)
        else:
            value = sum(values) / len(values)
            if not math.isfinite(value):
                raise ValueError(f"objective is {value}")
            trial.study.tell(trial, values=value)
    except Exception as e:  # a failing trial is recorded as failed; the sweep goes on
        state = optuna.trial.TrialState.FAIL
        log.error("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
        trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        trial.study.tell(trial, state=state)
    _mark_records(trial, study_name, state.name.lower())
    log.info("trial %d %s in %.0f s: %s%s", trial.number, state.name.lower(), time.perf_counter() - started,
             " ".join(params), f" -> {values[-1]:.4f}" if values and state.name == "COMPLETE" else "")


def run_when_free(cfg, study_name: str, sweep_info: dict, on_eval):
    """The run pipeline; if another worker is running the same config, wait and reuse its record."""
    from sft_lab import pipeline
    from sft_lab.record import RunLocked

    while True:
        try:
            return pipeline.run(cfg, group=study_name, sweep=sweep_info, on_eval=on_eval)
        except RunLocked:
            log.info("same config running in another worker; waiting to reuse its record")
            time.sleep(5)


def run_distributed(overrides: list[str], procs: int, run_dir: Path, study_name: str, sweep_info: dict):
    """`torchrun --nproc_per_node=procs -m sft_lab.run` on the trial's overrides, in the worker's GPUs; a
    finished record is reused, as in one process. Returns the run's record."""
    import os
    import subprocess
    import sys

    from sft_lab import record as rec

    earlier = rec.read_record(run_dir)
    if earlier and earlier.done:
        return earlier
    group = [] if any(o.startswith("tracking.group=") for o in overrides) else [f"tracking.group={study_name}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "sft_lab.run", *overrides, *group]
    log.info("trial run on %d processes: %s", procs, " ".join(cmd[5:]))
    while True:
        out = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True)
        if out.returncode == 0 or not rec.is_locked(run_dir):
            break
        log.info("same config running in another worker; waiting to reuse its record")
        time.sleep(5)
    record = rec.read_record(run_dir)
    if record is None or not record.done:
        raise RuntimeError(f"torchrun run exited {out.returncode} ({record.status if record else 'no record'}): "
                           f"{out.stderr.strip()[-1500:]}")
    if record.sweep is None:  # made by this trial: say so, as an in-process run's record does
        record.sweep = sweep_info
        rec.write_record(run_dir, record)
    return record


def _mark_records(trial, study_name: str, state: str) -> None:
    """Write the trial's final state into the records it created (not into reused ones)."""
    from sft_lab import record as rec

    for key, run_dir in stored_user_attrs(trial).items():
        if not key.startswith("run_dir_"):
            continue
        r = rec.read_record(Path(run_dir))
        if r and r.sweep and r.sweep.get("trial") == trial.number and r.sweep.get("study") == study_name:
            r.sweep["state"] = state
            rec.write_record(Path(run_dir), r)


def worker(spec: SweepSpec, storage_url: str, study_name: str, extra: list[str], procs: int = 1) -> int:
    """Take queued trials until none is left (each run over `procs` processes); returns how many it ran."""
    with storage_lock(storage_url):
        storage = open_storage(storage_url, spec.heartbeat_s, spec.grace_s)
        study = open_study(storage, study_name, spec)
    done = 0
    while (trial := claim_queued_trial(study, spec)) is not None:
        with Heartbeat(trial, spec.heartbeat_s):
            run_trial(trial, spec, extra, study_name, procs)
        done += 1
    return done
