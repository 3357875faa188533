"""One run, start to end: skip it if finished, lock its folder, archive a forced re-run's results,
then the phases (sft_lab/phases.py): setup -> start -> train -> evaluate -> finish.

Used by `python -m sft_lab.run` (Hydra) and by the sweep alike, so both leave the same record and
the same W&B run.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig

from sft_lab import distributed, phases
from sft_lab import record as rec
from sft_lab.config import check_overrides, expand_heldout, to_container, validate
from sft_lab.record import RunRecord

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft asks transformers; not ours to fix


def run(cfg: DictConfig, group: Optional[str] = None, sweep: Optional[dict] = None,
        on_eval: Optional[Callable[[float, int], bool]] = None,
        overrides: Optional[list[str]] = None) -> Optional[RunRecord]:
    """Run one config; returns its record. A finished or pruned record is returned as is unless force=true.

    Under torchrun, ranks other than 0 train their share and return None (sft_lab/distributed.py)."""
    validate(cfg)
    check_overrides(cfg, overrides)
    expand_heldout(cfg.eval)
    config = to_container(cfg)
    fp = rec.fingerprint(config)  # the same on every rank under torchrun
    distributed.init()
    run_dir = rec.run_dir_for(cfg.paths.runs_dir, fp)
    try:
        existing = rec.read_record(run_dir)
        corrupt = False
    except rec.CorruptRecord:
        if not cfg.force:
            raise
        existing, corrupt = None, True
    if existing and existing.done and not cfg.force:
        log.info("Already %s: %s (force=true re-runs it)", existing.status, run_dir / rec.RECORD)
        return existing

    to_archive = corrupt or bool(existing and existing.done)
    ctx = phases.RunContext(cfg, config, fp, run_dir, group, sweep, list(overrides or []),
                            earlier=None if to_archive else existing,  # a failed or killed attempt, resumed
                            on_eval=on_eval)
    if not distributed.is_main():
        return _follow(ctx)
    made_here = not run_dir.exists()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_sigterm_as_interrupt())
            try:
                _check_writable(run_dir, cfg.paths.runs_dir)
                stack.enter_context(rec.run_lock(run_dir))
                stack.enter_context(_log_to(run_dir / "run.log"))
                record, inputs, tracker = _begin(ctx, to_archive)
            except BaseException as e:
                distributed.all_ok(e)  # the other ranks stop too; raises e here
            return phases.execute(ctx, inputs, record, tracker)
    finally:
        if made_here and not (run_dir / rec.RECORD).exists():  # failed on its inputs: leave no half-made folder
            shutil.rmtree(run_dir, ignore_errors=True)


def _begin(ctx: phases.RunContext, to_archive: bool):
    """Inputs loaded, then (force=true) the old results moved aside, the first record and the tracker.

    The old results move only once the new run's inputs have loaded, and come back if it fails before
    its first record, so a bad override never costs a finished run."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    inputs = phases.setup(cfg)
    archived = rec.archive(run_dir) if to_archive else None
    try:
        record = phases.start(ctx, inputs)
    except BaseException:
        if archived:
            rec.restore(run_dir, archived)
        raise
    if archived:
        log.info("force=true: archived the earlier run to %s", archived)
    from sft_lab.tracking import start_tracker

    try:
        tracker = start_tracker(cfg.tracking, record, cfg.paths.runs_dir)
    except BaseException as e:
        phases.finish(run_dir, record, "failed", e)
        raise
    record.wandb_run_id = tracker.run_id
    return record, inputs, tracker


def _follow(ctx: phases.RunContext) -> None:
    """A rank other than 0: load the same inputs, train its share, wait for rank 0 at the barrier."""
    inputs, error = None, None
    try:
        inputs = phases.setup(ctx.cfg)
    except BaseException as e:
        error = e
    distributed.all_ok(error)
    phases.train_share(ctx, inputs)
    distributed.barrier()
    return None


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (kill, Slurm's pre-emption, a container stopping) ends the run as Ctrl-C does: its record says
    'interrupted' and the last checkpoint is kept, instead of a record left at 'running'."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_writable(run_dir: Path, runs_dir: str) -> None:
    from sft_lab.files import check_writable

    check_writable(run_dir, f"paths.runs_dir={runs_dir!r}: the run folder")


class _log_to:
    """Copy this package's and transformers' log lines into the run folder while the run lasts."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.loggers = [logging.getLogger(n) for n in ("sft_lab", "transformers", "lm_eval")]
        for lg in self.loggers:
            lg.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        for lg in self.loggers:
            lg.removeHandler(self.handler)
        self.handler.close()
        return False
