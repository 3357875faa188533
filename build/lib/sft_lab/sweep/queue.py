"""The study's storage and trial queue: top-up, atomic claim and heartbeat.

The only module that touches Optuna's storage internals (`study._storage`, trial ids).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from pathlib import Path

from sft_lab.sweep.spec import (
    SweepError,
    SweepSpec,
    grid_points,
    make_pruner,
    make_sampler,
)

log = logging.getLogger("sft_lab.sweep")


def sqlalchemy_url(url: str) -> str:
    """postgresql://... names the driver installed with sft-lab (psycopg2); other URLs pass unchanged."""
    return "postgresql+psycopg2://" + url[len("postgresql://"):] if url.startswith("postgresql://") else url


def open_storage(url: str, heartbeat_s: int = 10, grace_s: int = 60):
    """sqlite:///..., postgresql://..., or journal:PATH (a journal file, e.g. on a shared disk). RDB storages fail
    a trial whose heartbeat (every heartbeat_s) is older than grace_s and queue it again (the sweep file's keys)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return RDBStorage(sqlalchemy_url(url), heartbeat_interval=heartbeat_s, grace_period=grace_s,
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

        url = sqlalchemy_url(url)
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


def stored_user_attrs(trial) -> dict:
    """The trial's user attributes as the storage holds them now (a live Trial caches its own)."""
    return trial.study._storage.get_trial(trial._trial_id).user_attrs


class Heartbeat:
    """Beats for a claimed trial while it runs (RDB storages), so a dead worker's trial is re-queued."""

    def __init__(self, trial, every_s: int):
        self.storage, self.trial_id, self.stop = trial.study._storage, trial._trial_id, threading.Event()
        self.every_s = every_s
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop.is_set():
            self.storage.record_heartbeat(self.trial_id)
            self.stop.wait(self.every_s)

    def __enter__(self):
        if hasattr(self.storage, "record_heartbeat"):
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        return False
