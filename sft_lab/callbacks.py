"""Hydra callbacks: checks before anything starts (every folder writable; every grid configuration
valid), and a multirun's end: the list of configurations that failed, then the ablation table."""

from __future__ import annotations

import json
import logging
import sys
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


FAILURES = "failures.jsonl"  # in the multirun's Hydra folder: one line per configuration that failed


def writable_places(config: DictConfig) -> None:
    """The runs folder, the W&B folder and the cache, each with one clear error; before Hydra writes anything."""
    from sft_lab.files import check_writable

    check_writable(config.paths.runs_dir, f"paths.runs_dir={config.paths.runs_dir}")
    if config.tracking.backend == "wandb":
        check_writable(Path(config.paths.runs_dir) / "wandb", "the W&B folder (<paths.runs_dir>/wandb)")
    check_writable(config.paths.cache_dir, f"paths.cache_dir={config.paths.cache_dir}")


def grid_overrides(config: DictConfig) -> list[list[str]]:
    """Every configuration of a basic-sweeper grid, as override lists."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _stop(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class Preflight(Callback):
    """Refuse before anything starts: an unwritable folder, or any bad configuration of a grid (all named)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from sft_lab.errors import UserError

        try:
            writable_places(config)
        except UserError as e:
            _stop(str(e))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra import compose

        from sft_lab.config import check_overrides, validate
        from sft_lab.errors import UserError, explain

        try:
            writable_places(config)
        except UserError as e:
            _stop(str(e))
        if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
            return  # another sweeper (Optuna) draws its configurations as it goes
        bad = []
        for overrides in grid_overrides(config):
            try:
                cfg = compose(config_name=config.hydra.job.config_name, overrides=overrides)
                validate(cfg)
                check_overrides(cfg, overrides)
            except UserError as e:
                bad.append(f"  {' '.join(overrides)}: {e}")
            except Exception as e:  # noqa: BLE001 - Hydra's own errors (an unknown group option, a bad value)
                bad.append(f"  {' '.join(overrides)}: {explain(e)}")
        if bad:
            _stop(f"{len(bad)} of the grid's configurations are invalid; nothing was run:\n" + "\n".join(bad))


def record_failure(sweep_dir: str, job: int, overrides: list[str], error: BaseException) -> None:
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(sweep_dir) / FAILURES, "a") as fh:
        fh.write(json.dumps({"job": job, "overrides": overrides, "error": f"{type(error).__name__}: {error}"}) + "\n")


class GridFailures(Callback):
    """A grid runs every configuration it can; at its end, the ones that failed, and exit status 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / FAILURES
        if not path.is_file():
            return
        failed = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        print(f"\n{len(failed)} configuration(s) of this grid failed (the others ran; re-running the same command "
              "resumes them):", file=sys.stderr)
        for f in failed:
            print(f"  #{f['job']} {' '.join(f['overrides'])}: {f['error']}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(1)
