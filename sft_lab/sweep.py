"""Optuna sweeps: `python -m sft_lab.sweep SWEEP_FILE [--n-trials N] [--workers N] [--storage URL]
[--study-name NAME] [overrides...]`.

Optuna is driven here, not through Hydra's sweeper: each trial's overrides become a config through
Hydra's compose API, and the same pipeline as `python -m sft_lab.run` runs it, reporting the held-out
loss every `prune_every` steps so that the pruner can stop it.

Trials are counted exactly: the driver tops the study up with queued (WAITING) trials until it holds
n_trials, and workers only take queued trials, each claimed atomically by the storage. A rerun with a
larger --n-trials queues the difference. A dead worker's trial (RDB storages: no heartbeat for
`grace_period` seconds) is failed and queued again with the same parameters; its run resumes from
its checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, OmegaConf

from sft_lab.errors import UserError

log = logging.getLogger("sft_lab.sweep")
# A dead worker's trial is failed and queued again once its heartbeat is this old (seconds).
HEARTBEAT_S = int(os.environ.get("SFT_LAB_HEARTBEAT_S", 10))
GRACE_S = int(os.environ.get("SFT_LAB_GRACE_S", 60))


class SweepError(UserError):
    pass


@dataclass
class ParamSpec:
    type: str = MISSING  # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[List[Any]] = None


@dataclass
class ObjectiveSpec:
    # "task.metric" names from record.json's eval block, averaged: e.g. [heldout.loss] or [arc_easy.acc, piqa.acc]
    metrics: List[str] = field(default_factory=lambda: ["heldout.loss"])
    direction: str = "minimize"


@dataclass
class SweepSpec:
    study_name: str = MISSING
    fixed: List[str] = field(default_factory=list)  # Hydra overrides for every trial
    space: Dict[str, ParamSpec] = field(default_factory=dict)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    sampler: Dict[str, Any] = field(default_factory=dict)  # {type: tpe (default) | random | grid | cmaes, seed: 0}
    pruner: Dict[str, Any] = field(default_factory=dict)  # {type: median (default) | successive_halving | hyperband | none, ...}
    prune_every: int = 10  # steps between held-out losses reported to the pruner
    prune_examples: int = 32  # held-out examples in those losses (0: the whole split); the final eval uses all
    n_trials: int = 10
    seeds: List[int] = field(default_factory=lambda: [0])  # replicates of every trial, averaged
    storage: Optional[str] = None  # default: sqlite:///<runs_dir>/optuna.db


def _quiet_optuna() -> None:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what each trial did


def load_spec(path: str) -> SweepSpec:
    if not Path(path).is_file():
        raise SweepError(f"sweep file {path} does not exist")
    import yaml

    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:  # keep yaml's line and column
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise SweepError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    try:
        spec = OmegaConf.merge(OmegaConf.structured(SweepSpec), OmegaConf.load(path))
    except Exception as e:
        raise SweepError(f"{path}: {str(e).splitlines()[0]} ({getattr(e, 'full_key', '')})") from None
    for key, p in spec.space.items():
        if p.type not in ("float", "int", "categorical"):
            raise SweepError(f"{path}: space.{key}.type={p.type!r} is not float, int or categorical")
        if p.type == "categorical" and not p.choices:
            raise SweepError(f"{path}: space.{key} is categorical but has no choices")
        if p.type != "categorical" and (p.low is None or p.high is None or p.low > p.high):
            raise SweepError(f"{path}: space.{key} needs low <= high")
    if spec.objective.direction not in ("minimize", "maximize"):
        raise SweepError(f"{path}: objective.direction must be minimize or maximize")
    return spec


# ---------------------------------------------------------------- Optuna pieces


def make_sampler(spec: SweepSpec, offset: int = 0):
    """offset: the trial number, so parallel workers sharing a seed don't propose the same point."""
    import optuna

    kind = spec.sampler.get("type", "tpe")
    seed = spec.sampler.get("seed", 0) + offset
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.sampler.get("n_startup_trials", 4))
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_space(spec), seed=seed)
    raise SweepError(f"sampler.type={kind!r} is not tpe, random, grid or cmaes")


def grid_space(spec: SweepSpec) -> dict[str, list]:
    grid = {}
    for key, p in spec.space.items():
        if p.type == "categorical":
            grid[key] = list(p.choices)
        elif p.step:
            n = int(round((p.high - p.low) / p.step))
            grid[key] = [p.low + i * p.step for i in range(n + 1)]
        else:
            raise SweepError(f"sampler grid: space.{key} needs choices or a step")
    return grid


def make_pruner(spec: SweepSpec):
    import optuna

    p = dict(spec.pruner)
    kind = p.pop("type", "median")
    if kind == "median":
        p.setdefault("n_startup_trials", 2)
    makers = {
        "median": optuna.pruners.MedianPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner,
    }
    if kind not in makers:
        raise SweepError(f"pruner.type={kind!r} is not one of {sorted(makers)}")
    try:
        return makers[kind](**p)
    except TypeError as e:
        raise SweepError(f"pruner {kind}: {e}") from None


def open_storage(url: str):
    """sqlite:///..., postgresql://..., or journal:PATH (a journal file, e.g. on a shared disk)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url[len("postgresql://"):]
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                          engine_kwargs={"pool_pre_ping": True})
    except Exception as e:
        raise SweepError(f"storage {url!r} cannot be opened: {type(e).__name__}: {str(e).splitlines()[0]}") from None


@contextlib.contextmanager
def storage_lock(url: str):
    """Serialise schema creation and queueing between processes that start together on one storage:
    a PostgreSQL advisory lock, or a file lock beside an SQLite database or a journal file."""
    if url.startswith(("postgresql", "mysql")):
        import sqlalchemy

        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url[len("postgresql://"):]
        if not url.startswith("postgresql"):
            yield
            return
        try:
            engine = sqlalchemy.create_engine(url)
            conn = engine.connect()
        except Exception as e:
            raise SweepError(f"storage {url!r} cannot be opened: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY})
            conn.close()
            engine.dispose()
        return
    from filelock import FileLock

    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("journal:"):] if url.startswith(
        "journal:") else None
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.sft-lab-lock"):  # not `.lock`: Optuna's journal backend locks that name itself
        yield


SCHEMA_LOCK_KEY = 0x5F7_1AB  # any constant shared by every sft-lab process


def open_study(storage, name: str, spec: SweepSpec):
    import optuna

    for attempt in range(5):  # concurrent first creation can race on the schema (seen on PostgreSQL)
        try:
            return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                       direction=spec.objective.direction, sampler=make_sampler(spec),
                                       pruner=make_pruner(spec))
        except SweepError:
            raise
        except Exception as e:
            if attempt == 4:
                raise SweepError(f"study {name!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
            time.sleep(0.5 * (attempt + 1))


def counted_trials(study) -> int:
    """Trials that count toward n_trials: all, less failed ones that were queued again (retries)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    from optuna.trial import TrialState

    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every grid point, in a seeded random order (as Optuna's GridSampler visits them)."""
    import itertools
    import random

    grid = grid_space(spec)
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    random.Random(spec.sampler.get("seed", 0)).shuffle(points)
    return points


def top_up(study, spec: SweepSpec, n_trials: int) -> int:
    """Queue trials until the study holds n_trials; a grid queues its points in order, each once."""
    missing = max(0, n_trials - counted_trials(study))
    if spec.sampler.get("type") == "grid":
        taken = [t.params or t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False)]
        todo = [p for p in grid_points(spec) if p not in taken][:missing]
        for point in todo:
            study.enqueue_trial(point, skip_if_exists=False)
        return len(todo)
    for _ in range(missing):
        study.enqueue_trial({}, skip_if_exists=False)
    return missing


def claim_queued_trial(study, spec: SweepSpec):
    """Take one WAITING trial, atomically (the storage refuses a second claimant); None when none is left."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    if hasattr(storage, "record_heartbeat"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, then queued again
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                study.sampler = make_sampler(spec, offset=t.number)  # samplers keep no state but their RNG
                return optuna.Trial(study, t._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


class Heartbeat:
    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id, self.stop = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop.is_set():
            self.storage.record_heartbeat(self.trial_id)
            self.stop.wait(HEARTBEAT_S)

    def __enter__(self):
        if hasattr(self.storage, "record_heartbeat"):
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        return False


# ---------------------------------------------------------------- trials


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


def objective_value(record: dict, metrics: list[str]) -> float:
    values = []
    for name in metrics:
        task, _, metric = name.rpartition(".")
        values.append(record["eval"][task][metric]["value"])
    return sum(values) / len(values)


def trial_overrides(spec: SweepSpec, extra: list[str]) -> list[str]:
    pruning = spec.pruner.get("type", "median") != "none"
    prune = [f"train.eval_steps={spec.prune_every}", f"train.eval_examples={spec.prune_examples}"] if pruning else []
    return [*spec.fixed, *prune, *extra]


def run_trial(trial, spec: SweepSpec, extra: list[str], study_name: str) -> None:
    """One trial: every seed through the run pipeline; tells the study complete / pruned / failed."""
    import optuna

    from sft_lab import record as rec
    from sft_lab.config import compose, to_container
    from sft_lab.train import TrainingStopped

    sign = 1 if spec.objective.direction == "minimize" else -1
    values, state, started, params = [], optuna.trial.TrialState.COMPLETE, time.perf_counter(), []

    def on_eval(heldout_loss: float, step: int) -> bool:
        trial.report(sign * heldout_loss, step)  # held-out loss, sign-matched to the study's direction
        return trial.should_prune()

    try:
        params = suggest(trial, spec)
        for i, seed in enumerate(spec.seeds):
            cfg = compose([*trial_overrides(spec, extra), *params, f"seed={seed}"])
            run_dir = rec.run_dir_for(cfg.paths.runs_dir, rec.fingerprint(to_container(cfg)))
            trial.set_user_attr(f"run_dir_seed{seed}", str(run_dir))
            sweep_info = {"sweep": {"study": study_name, "trial": trial.number, "state": "running"}}
            record = run_when_free(cfg, study_name, sweep_info, on_eval if i == 0 else None)
            if record["status"] == "pruned":  # a reused pruned record: never re-run as if new
                raise TrainingStopped(record.get("train"))
            values.append(objective_value(record, list(spec.objective.metrics)))
        value = sum(values) / len(values)
        if not math.isfinite(value):
            raise ValueError(f"objective is {value}")
        trial.study.tell(trial, values=value)
    except TrainingStopped:
        state = optuna.trial.TrialState.PRUNED
        trial.study.tell(trial, state=state)
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
            return pipeline.run(cfg, group=study_name, extra=sweep_info, on_eval=on_eval)
        except RunLocked:
            log.info("same config running in another worker; waiting to reuse its record")
            time.sleep(5)


def _mark_records(trial, study_name: str, state: str) -> None:
    """Write the trial's final state into the records it created (not into reused ones)."""
    from sft_lab import record as rec

    frozen = trial.study._storage.get_trial(trial._trial_id)
    for key, run_dir in frozen.user_attrs.items():
        if not key.startswith("run_dir_"):
            continue
        r = rec.read_record(Path(run_dir))
        if r and r.get("sweep", {}).get("trial") == trial.number and r["sweep"].get("study") == study_name:
            r["sweep"]["state"] = state
            rec.write_record(Path(run_dir), r)


def worker(spec: SweepSpec, storage_url: str, study_name: str, extra: list[str]) -> int:
    """Take queued trials until none is left; returns how many this worker ran."""
    with storage_lock(storage_url):
        storage = open_storage(storage_url)
        study = open_study(storage, study_name, spec)
    done = 0
    while (trial := claim_queued_trial(study, spec)) is not None:
        with Heartbeat(storage, trial._trial_id):
            run_trial(trial, spec, extra, study_name)
        done += 1
    return done


# ---------------------------------------------------------------- checks and summary


def check(spec: SweepSpec, extra: list[str]) -> str:
    """Before any trial: every searched key exists, each choice composes, the objective is produced."""
    from sft_lab.config import compose, validate

    for key, p in spec.space.items():
        values = list(p.choices) if p.type == "categorical" else [p.low, p.high]
        for v in values:
            v = int(v) if p.type == "int" else v
            try:
                cfg = compose([*trial_overrides(spec, extra), f"{key}={v}"])
                validate(cfg)
            except Exception as e:
                raise SweepError(f"space.{key}={v!r} does not make a valid config: {str(e).splitlines()[0]}") from None
    cfg = compose(trial_overrides(spec, extra))
    for name in spec.objective.metrics:
        task, _, metric = name.rpartition(".")
        if not task or task not in cfg.eval.tasks:
            raise SweepError(f"objective metric {name!r}: no eval produces it (eval.tasks={list(cfg.eval.tasks)}; "
                             "name it task.metric, e.g. heldout.loss or arc_easy.acc)")
    if spec.pruner.get("type", "median") != "none" and "heldout" not in cfg.eval.tasks and cfg.data.heldout_fraction == 0:
        raise SweepError("pruning needs a held-out split (data.heldout_fraction > 0)")
    return cfg.paths.runs_dir


def summary(study) -> str:
    from collections import Counter

    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_state = Counter(t.state.name.lower() for t in trials)
    lines = [f"study {study.study_name}: {len(trials)} trials ({', '.join(f'{k} {v}' for k, v in sorted(by_state.items()))})"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        lines.append(f"best trial {best.number}: value {best.value:.4f}, params {best.params}")
        lines += [f"  record: {v}/record.json" for k, v in best.user_attrs.items() if k.startswith("run_dir_")]
    if len(complete) >= 4 and study.best_trial.params:
        try:
            import optuna

            imp = optuna.importance.get_param_importances(study)
            lines.append("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
        except Exception as e:  # too little variation, say so rather than fail the sweep
            lines.append(f"importances: not computed ({e})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        prog="python -m sft_lab.sweep", description=__doc__.split("\n\n")[0],
        epilog="Example: python -m sft_lab.sweep sweeps/lr_rank.yaml model=tiny train.max_steps=20 --workers 2",
    )
    parser.add_argument("sweep_file", help="a sweep YAML (see sweeps/)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every trial")
    parser.add_argument("--n-trials", type=int, help="total trials in the study (resume: continue to this many)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (0: only create and queue)")
    parser.add_argument("--storage", help="sqlite:///..., postgresql://user@host:port/db or journal:/shared/path.log")
    parser.add_argument("--study-name", help="defaults to the sweep file's study_name")
    parser.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    args = parse_args(argv)
    import sft_lab.config  # noqa: F401

    _quiet_optuna()
    try:
        if args.n_trials is not None and args.n_trials < 1:
            raise SweepError(f"--n-trials must be at least 1, got {args.n_trials}")
        spec = load_spec(args.sweep_file)
        name = args.study_name or spec.study_name
        if args.worker_only:
            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            worker(spec, args.storage, name, args.overrides)
            return 0
        runs_dir = check(spec, args.overrides)
        storage_url = args.storage or spec.storage or f"sqlite:///{Path(runs_dir).resolve()}/optuna.db"
        if storage_url.startswith("sqlite:///"):
            Path(storage_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        with storage_lock(storage_url):  # drivers started together queue the missing trials once
            study = open_study(open_storage(storage_url), name, spec)
            queued = top_up(study, spec, spec.n_trials if args.n_trials is None else args.n_trials)
        log.info("study %s on %s: %d trials queued", name, storage_url, queued)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.workers == 1:
        worker(spec, storage_url, name, args.overrides)
    elif args.workers > 1:
        import os

        threads = max(1, len(os.sched_getaffinity(0)) // args.workers)  # share the cores, don't oversubscribe
        cmd = [sys.executable, "-m", "sft_lab.sweep", args.sweep_file, *args.overrides, "--storage", storage_url,
               "--study-name", name, "--worker-only", "--threads", str(threads)]
        procs = [subprocess.Popen(cmd) for _ in range(args.workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            log.warning("worker exit codes: %s", codes)
    print(summary(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
