"""Hydra callbacks: a multirun (`-m`) ends with the ablation table of the grid it ran."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("sft_lab")


def swept_keys(task_overrides: list[str]) -> list[str]:
    """The keys a multirun sweeps (`data=alpaca,dolly`), as Hydra's own parser reads them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    return [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]


class GridTable(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        rows = [k for k in swept_keys(config.hydra.overrides.task) if k != "seed"]
        group = config.tracking.group or Path(config.hydra.sweep.dir).name
        if not rows:
            return
        from sft_lab.analysis import cli

        print(f"\nAblation table of this grid (group {group}); the full one, with the base row: "
              f"python analysis/ablation_table.py {config.paths.runs_dir} --rows {','.join(rows)}", flush=True)
        try:
            cli.main([str(config.paths.runs_dir), "--rows", ",".join(rows), "--no-base", "--filter", f"group={group}"])
        except SystemExit:
            pass
        except Exception as e:  # the runs are finished and recorded whatever happens here
            log.warning("no grid table: %s: %s", type(e).__name__, e)
