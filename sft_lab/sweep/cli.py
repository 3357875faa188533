"""`python -m sft_lab.sweep`: create or resume the study, queue the missing trials, start the workers, summarise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sft_lab.devices import visible_gpus
from sft_lab.errors import UserError
from sft_lab.sweep import __doc__ as sweep_doc
from sft_lab.sweep.queue import open_storage, open_study, storage_lock, top_up
from sft_lab.sweep.spec import SweepError, check, load_spec, pruning
from sft_lab.sweep.trial import worker
from sft_lab.sweep.worker import quiet_optuna, start_local

log = logging.getLogger("sft_lab.sweep")


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


def worker_layout(workers: int, gpus: list[str], cores: int, per_trial: int = 1) -> list[dict[str, str]]:
    """Per worker: the GPUs it is pinned to (CUDA_VISIBLE_DEVICES) and its share of the CPU threads.

    With GPUs, worker i gets the i-th block of `per_trial` visible GPUs; asking for more than there are is
    refused (two runs on one GPU only slow each other down). Without GPUs, the workers share the cores."""
    if gpus and workers * per_trial > len(gpus):
        raise SweepError(f"--workers {workers} x --gpus-per-trial {per_trial} needs {workers * per_trial} GPUs; "
                         f"{len(gpus)} visible ({','.join(gpus)}): one worker per GPU (block) at most")
    layout = []
    for i in range(max(workers, 0)):
        env = {"threads": str(max(1, cores // max(workers, 1)))}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * per_trial:(i + 1) * per_trial])
        layout.append(env)
    return layout


def procs_per_trial(gpus_per_trial: int, gpus: list[str], spec) -> int:
    """Processes per trial run: K GPUs through torchrun; on CPU one, in the worker's process, as before."""
    if gpus_per_trial < 1:
        raise SweepError(f"--gpus-per-trial must be at least 1, got {gpus_per_trial}")
    if gpus_per_trial == 1:
        return 1
    if not gpus:
        log.warning("--gpus-per-trial %d: no GPU visible, so each trial runs in its worker's process", gpus_per_trial)
        return 1
    if pruning(spec):
        raise SweepError(f"--gpus-per-trial {gpus_per_trial}: each trial is a torchrun job whose held-out losses do "
                         "not reach the worker's pruner; set pruner: {type: none} in the sweep file")
    return gpus_per_trial


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        prog="python -m sft_lab.sweep", description=sweep_doc.split("\n\n")[0],
        epilog="Example: python -m sft_lab.sweep sweeps/lr_rank.yaml model=tiny train.max_steps=20 --workers 2",
    )
    parser.add_argument("sweep_file", help="a sweep YAML (see sweeps/)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every trial")
    parser.add_argument("--n-trials", type=int, help="total trials in the study (resume: continue to this many)")
    parser.add_argument("--workers", type=int, default=1,
                        help="local worker processes (0: only create and queue). On a GPU node worker i gets its own "
                             "GPU(s) through CUDA_VISIBLE_DEVICES; on CPU the workers share the cores")
    parser.add_argument("--gpus-per-trial", type=int, default=1,
                        help="GPUs per trial (default 1); above 1 each trial run is a torchrun job over that many "
                             "GPUs; --workers × this must fit the node's GPUs")
    parser.add_argument("--storage", help="sqlite:///..., postgresql://user@host:port/db or journal:/shared/path.log")
    parser.add_argument("--study-name", help="defaults to the sweep file's study_name")
    return parser.parse_intermixed_args(argv)


def interrupted(what: str) -> int:
    """Ctrl-C or SIGTERM: say what is kept and how to go on, without a traceback; the exit status 130."""
    print(f"interrupted: the {what}'s finished trials and runs are kept, a killed run keeps its last checkpoint; "
          "run the same command again to resume (a trial cut off is run again once its heartbeat is grace_s old)",
          file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    args = parse_args(argv)
    import sft_lab.config  # noqa: F401

    quiet_optuna()
    try:
        if args.n_trials is not None and args.n_trials < 1:
            raise SweepError(f"--n-trials must be at least 1, got {args.n_trials}")
        from sft_lab import distributed

        if distributed.world_size() > 1:
            raise SweepError("python -m sft_lab.sweep under torchrun / accelerate launch: a sweep starts its own "
                             "workers (--workers N, one GPU each); launch it as a plain process")
        spec = load_spec(args.sweep_file)
        gpus = visible_gpus()
        procs = procs_per_trial(args.gpus_per_trial, gpus, spec)
        layout = worker_layout(args.workers, gpus, len(os.sched_getaffinity(0)), procs)
        name = args.study_name or spec.study_name
        runs_dir = check(spec, args.overrides)
        storage_url = args.storage or spec.storage or f"sqlite:///{Path(runs_dir).resolve()}/optuna.db"
        if storage_url.startswith("sqlite:///"):
            Path(storage_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        with storage_lock(storage_url):  # drivers started together queue the missing trials once
            study = open_study(open_storage(storage_url, spec.heartbeat_s, spec.grace_s), name, spec)
            queued = top_up(study, spec, spec.n_trials if args.n_trials is None else args.n_trials)
        log.info("study %s on %s: %d trials queued", name, storage_url, queued)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.workers == 1:
            worker(spec, storage_url, name, args.overrides, procs)
        elif args.workers > 1:
            codes = start_local(layout, args.sweep_file, storage_url, name, args.overrides, procs)
            if any(codes):
                log.warning("worker exit codes: %s", codes)
    except KeyboardInterrupt:
        return interrupted("sweep")
    print(summary(study))
    hint = unfinished(study, storage_url)
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        return 1
    return 0


def unfinished(study, storage_url: str) -> str | None:
    """Trials left RUNNING when this driver's workers are done. RDB storages fail a dead worker's trial by its
    heartbeat; a journal keeps none, so such a trial would stay RUNNING and the sweep end unfinished in silence."""
    from optuna.trial import TrialState

    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if not running or not storage_url.startswith("journal:"):
        return None
    return (f"the sweep is unfinished: trial(s) {running} are still RUNNING in {storage_url}, and journal storages "
            "keep no heartbeat, so a worker that died leaves its trial RUNNING for good. If no worker elsewhere is "
            "running them, mark them failed (optuna.storages.JournalStorage: study.tell(trial, state=FAIL)) and "
            "run the same command again to queue them anew, or use an sqlite:/// or postgresql:// storage, whose "
            "heartbeat does that by itself")
