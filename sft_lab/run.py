"""Entry point: `python -m sft_lab.run [overrides]`, one SFT run (or a grid with -m).

Trains with LoRA, evaluates with lm-eval, records to <paths.runs_dir>/<fingerprint>/record.json and
logs to W&B. `python -m sft_lab.run --help` lists the config groups and common overrides.
"""

from __future__ import annotations

import logging
import sys
import hydra
from omegaconf import DictConfig

from sft_lab import CONF_DIR

import sft_lab.config  # noqa: F401  (registers the schemas)
from sft_lab.errors import UserError

log = logging.getLogger("sft_lab")



def multirun_group() -> str | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        from pathlib import Path

        return Path(hc.sweep.dir).name
    return None


def share_cores_with_parallel_jobs() -> None:
    """Under hydra/launcher=joblib, split the CPU cores between the parallel jobs."""
    import os

    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return
    cores = len(os.sched_getaffinity(0))
    n_jobs = launcher.get("n_jobs", -1)
    n_jobs = cores if n_jobs is None or n_jobs <= 0 else n_jobs
    import torch

    torch.set_num_threads(max(1, cores // n_jobs))


def record_grid_failure(error: BaseException) -> bool:
    """In a grid, note the failed configuration for the end-of-grid summary and go on; False outside a grid."""
    from hydra.core.hydra_config import HydraConfig

    if multirun_group() is None:
        return False
    from sft_lab.callbacks import record_failure

    hc = HydraConfig.get()
    record_failure(hc.sweep.dir, hc.job.num, task_overrides(), error)
    return True


def task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def refuse_grids_under_torchrun() -> None:
    from sft_lab import distributed

    if distributed.world_size() > 1 and multirun_group() is not None:
        from sft_lab.config import ConfigError

        raise ConfigError("-m (a grid) under torchrun / accelerate launch: launch one config per torchrun call, "
                          "or run the grid with one GPU per job (hydra/launcher=submitit_slurm with "
                          "tasks_per_node, or python -m sft_lab.sweep --workers N)")




@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from sft_lab import devices
    from sft_lab.pipeline import run

    share_cores_with_parallel_jobs()
    try:
        devices.claim()  # hydra/launcher=gpus: this worker's device, before anything starts CUDA
        refuse_grids_under_torchrun()
        record = run(cfg, group=cfg.tracking.group or multirun_group(), overrides=task_overrides())
    except UserError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        if not record_grid_failure(e):
            sys.exit(2)
        return
    except KeyboardInterrupt:
        try:
            print("interrupted: the run's record says 'interrupted' and its last checkpoint is kept; "
                  "run the same command again to resume it", file=sys.stderr)
        except OSError:  # the terminal or pipe is gone: stop all the same (a grid must not go on)
            pass
        sys.exit(130)
    except Exception as e:
        if not record_grid_failure(e):
            raise
        log.exception("this configuration failed; the grid goes on")
        return
    if record is not None:  # None: a rank other than 0 under torchrun, done with its share
        from sft_lab.summary import run_summary

        print(run_summary(record), flush=True)


if __name__ == "__main__":
    main()
