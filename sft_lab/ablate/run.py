"""An ablation's runs: each arm tuned in its own Optuna study on dev items, then its best configuration
replicated with fresh seeds on test items. Both steps resume: the studies count their trials exactly (a dead
run's trial is queued again with the same parameters and its run resumes from its checkpoint), and final runs
are found by their fingerprint."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from sft_lab.ablate.spec import AblateError, AblateSpec, arm_sweep

log = logging.getLogger("sft_lab.ablate")


@dataclass
class Arm:
    label: str
    overrides: list[str]
    study: str  # its Optuna study
    values: list[float] = field(default_factory=list)  # finished trials' dev scores, in trial order
    pruned: int = 0
    failed: int = 0
    trial_dirs: list[str] = field(default_factory=list)  # the tuning trials' runs
    trials: list[dict] = field(default_factory=list)  # every trial: number, params, dev score, state
    best: dict[str, Any] = field(default_factory=dict)  # the tuned values
    best_trial: Optional[int] = None
    final_dirs: list[str] = field(default_factory=list)


def storage_url(spec: AblateSpec, runs_dir: str, given: Optional[str]) -> str:
    url = given or spec.storage or f"sqlite:///{Path(runs_dir).resolve()}/optuna.db"
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return url


@dataclass
class Queued:
    """One arm's study, its trials queued, and the sweep file its workers read."""

    label: str
    overrides: list[str]
    sweep: Any  # SweepSpec
    study: Any  # optuna.Study
    path: Path


def queue(spec: AblateSpec, label: str, overrides: list[str], extra: list[str], url: str, folder: Path) -> Queued:
    """The arm's study, topped up to spec.trials; its sweep file written for workers (local, submitit, Slurm)."""
    from sft_lab.sweep.queue import open_storage, open_study, storage_lock, top_up
    from sft_lab.sweep.spec import check

    sweep = arm_sweep(spec, label, overrides)
    check(sweep, extra)
    with storage_lock(url):
        study = open_study(open_storage(url, sweep.heartbeat_s, sweep.grace_s), sweep.study_name, sweep)
        queued = top_up(study, sweep, sweep.n_trials)
    path = folder / f"{label.replace('/', '_').replace(',', '__').replace('=', '-')}.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(sweep)))
    log.info("arm %s: study %s, %d trial(s) queued; its sweep file %s", label, sweep.study_name, queued, path)
    return Queued(label, overrides, sweep, study, path)


def tune(q: Queued, extra: list[str], url: str, workers: int) -> Arm:
    """Work the arm's queue until no trial is waiting or running: in this process (1), in N local worker
    processes, or (0) by workers started elsewhere on the same storage (python -m sft_lab.sweep.worker)."""
    import os

    from optuna.trial import TrialState

    from sft_lab.devices import visible_gpus
    from sft_lab.sweep.cli import worker_layout
    from sft_lab.sweep.trial import worker
    from sft_lab.sweep.worker import start_local

    while True:
        if workers > 1:
            layout = worker_layout(workers, visible_gpus(), len(os.sched_getaffinity(0)))
            start_local(layout, str(q.path), url, q.sweep.study_name, extra, 1)
        elif workers == 1:
            worker(q.sweep, url, q.sweep.study_name, extra)
        left = q.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        if not left:
            break
        # another process's trials, or a killed one's: its heartbeat stops, and after grace_s it is queued again
        log.info("arm %s: trial(s) %s waiting or running elsewhere (a killed one is queued again after grace_s=%d s)",
                 q.label, [t.number for t in left], q.sweep.grace_s)
        time.sleep(max(1, q.sweep.heartbeat_s))
    return summarise(q.study, q.label, q.overrides, q.sweep.study_name)


def summarise(study, label: str, overrides: list[str], name: str) -> Arm:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    arm = Arm(label, overrides, name, [t.value for t in done],
              sum(t.state == TrialState.PRUNED for t in trials),
              sum(t.state == TrialState.FAIL and t.number not in retried for t in trials))
    arm.trials = [{"number": t.number, "params": dict(t.params), "value": t.value, "state": t.state.name.lower()}
                  for t in trials if t.state != TrialState.FAIL or t.number not in retried]
    arm.trial_dirs = sorted({v for t in trials for k, v in t.user_attrs.items() if k.startswith("run_dir_")})
    if not done:
        errors = [t.user_attrs.get("error") for t in trials if t.user_attrs.get("error")]
        raise AblateError(f"arm {label}: no tuning trial finished ({arm.pruned} pruned, {arm.failed} failed)"
                          + (f"; the first error: {errors[0]}" if errors else ""))
    best = study.best_trial
    arm.best, arm.best_trial = dict(best.params), best.number
    return arm


def curve_overrides(spec: AblateSpec) -> list[str]:
    """The final runs' learning curve: eval.every_tokens (held-out loss and items), or the held-out loss every
    prune_every steps."""
    c = spec.curve
    if not c.every_tokens:
        return [f"train.eval_steps={spec.prune_every}", f"train.eval_examples={spec.prune_examples}"]
    tasks = [f"eval.every_tasks=[{','.join(c.tasks)}]"] if c.tasks is not None else []
    return [f"eval.every_tokens={c.every_tokens}", f"eval.every_limit={c.limit}",
            f"train.eval_examples={spec.prune_examples}", *tasks]


def finals(spec: AblateSpec, arm: Arm, extra: list[str], study_name: str) -> None:
    """The arm's best configuration, once per final seed, on test items; finished runs are reused."""
    from sft_lab import pipeline
    from sft_lab import record as rec
    from sft_lab.config import compose, expand_heldout, to_container

    tuned = [f"{k}={v}" for k, v in arm.best.items()]
    tasks = [f"eval.tasks=[{','.join(spec.final)}]"] if spec.final else []
    for seed in spec.seeds:
        overrides = [*spec.fixed, *arm.overrides, *tuned, *extra, *tasks, *spec.final_overrides, f"seed={seed}",
                     "eval.split=test", *curve_overrides(spec)]
        cfg = compose(overrides)
        expand_heldout(cfg.eval)
        run_dir = rec.run_dir_for(cfg.paths.runs_dir, rec.fingerprint(to_container(cfg)))
        info = {"study": study_name, "arm": arm.label, "role": "final", "tuned": arm.best, "tuned_on": "dev",
                "trial": arm.best_trial}
        log.info("arm %s: final run, seed %d, %s", arm.label, seed, " ".join(tuned))
        record = pipeline.run(cfg, group=study_name, sweep=info, overrides=overrides)
        if record is None or record.status != "finished":
            status = record.status if record else "without a record"
            raise AblateError(f"arm {arm.label}: the final run with seed {seed} ended {status} ({run_dir}); run the "
                              "same command again to resume it")
        arm.final_dirs.append(str(run_dir))
