"""A sweep worker as a Hydra job, so that hydra-submitit-launcher can place workers on a cluster.

    python -m sft_lab.sweep sweeps/lr_rank.yaml --storage URL --workers 0      # create the study, queue trials
    python -m sft_lab.sweep_worker -m sweep_file=sweeps/lr_rank.yaml storage=URL worker=0,1 hydra/launcher=submitit_slurm

Every worker takes queued trials from the same study until none is left (see sft_lab/sweep/).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

# Absolute, so the config is found however the entry point is launched (python -m, sft-lab-run, completion).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(config_path=CONF_DIR, config_name="sweep_worker", version_base="1.3")
def main(cfg: DictConfig) -> int:
    import sft_lab.config  # noqa: F401
    from sft_lab.sweep.cli import _quiet_optuna
    from sft_lab.sweep.spec import load_spec
    from sft_lab.sweep.trial import worker

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    _quiet_optuna()
    spec = load_spec(cfg.sweep_file)
    return worker(spec, cfg.storage, cfg.study_name or spec.study_name, list(cfg.overrides))


if __name__ == "__main__":
    main()
