"""Sweep workers: each takes queued trials from the study until none is left.

The driver (`python -m sft_lab.sweep --workers N`) starts N of them as local processes through `start_local`.
On a cluster they are Hydra jobs, so that hydra-submitit-launcher can place them (conf/sweep_worker.yaml):

    python -m sft_lab.sweep sweeps/lr_rank.yaml --storage URL --workers 0      # create the study, queue trials
    python -m sft_lab.sweep.worker -m sweep_file=sweeps/lr_rank.yaml storage=URL worker=0,1 hydra/launcher=submitit_slurm
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings

import hydra
from omegaconf import DictConfig

from sft_lab import CONF_DIR

log = logging.getLogger("sft_lab.sweep")


def quiet_optuna() -> None:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what each trial did


def work(sweep_file: str, storage: str, study_name: str | None, overrides: list[str], threads: int = 0,
         procs: int = 1) -> int:
    """One worker: the trials it ran."""
    import sft_lab.config  # noqa: F401  (registers the schemas)
    from sft_lab.sweep.spec import load_spec
    from sft_lab.sweep.trial import worker

    if threads:
        import torch

        torch.set_num_threads(threads)
    quiet_optuna()
    spec = load_spec(sweep_file)
    return worker(spec, storage, study_name or spec.study_name, list(overrides), procs)


def _local(env: dict[str, str], *args) -> None:
    os.environ.update(env)  # CUDA_VISIBLE_DEVICES before torch is imported in this process
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    work(*args)


def start_local(layout: list[dict[str, str]], sweep_file: str, storage: str, study_name: str, overrides: list[str],
                procs: int) -> list[int]:
    """One process per entry of `layout` (its GPUs and threads, from cli.worker_layout); their exit codes."""
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch or CUDA state
    workers = []
    for i, env in enumerate(layout):
        log.info("worker %d: %s", i, ", ".join(f"{k}={v}" for k, v in env.items()))
        gpus = {k: v for k, v in env.items() if k == "CUDA_VISIBLE_DEVICES"}
        p = spawn.Process(target=_local, args=(gpus, sweep_file, storage, study_name, overrides, int(env["threads"]),
                                               procs), name=f"sweep-worker-{i}")
        p.start()
        workers.append(p)
    for p in workers:
        p.join()
    return [p.exitcode for p in workers]


@hydra.main(config_path=str(CONF_DIR), config_name="sweep_worker", version_base="1.3")
def main(cfg: DictConfig) -> int:
    return work(cfg.sweep_file, cfg.storage, cfg.study_name, list(cfg.overrides), cfg.threads)


if __name__ == "__main__":
    main()
