"""Sweep files: the typed spec (defaults live here), its samplers and pruners, and the checks run before any trial.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, OmegaConf

from sft_lab.errors import UserError, explain

log = logging.getLogger("sft_lab.sweep")


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


DEFAULT_PRUNER = "median"


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
    # RDB storages: a running trial beats every heartbeat_s; one silent for grace_s (a dead worker) is failed
    # and queued again with the same parameters, and its run resumes from its last checkpoint.
    heartbeat_s: int = 10
    grace_s: int = 60


def pruning(spec: SweepSpec) -> bool:
    return spec.pruner.get("type", DEFAULT_PRUNER) != "none"


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
    if not 0 < spec.heartbeat_s < spec.grace_s:
        raise SweepError(f"{path}: heartbeat_s={spec.heartbeat_s} must be at least 1 and below grace_s={spec.grace_s}")
    return spec


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


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every grid point, in a seeded random order (as Optuna's GridSampler visits them)."""
    import itertools
    import random

    grid = grid_space(spec)
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    random.Random(spec.sampler.get("seed", 0)).shuffle(points)
    return points


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


def make_pruner(spec: SweepSpec):
    import optuna

    p = dict(spec.pruner)
    kind = p.pop("type", DEFAULT_PRUNER)
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


def trial_overrides(spec: SweepSpec, extra: list[str]) -> list[str]:
    prune = [f"train.eval_steps={spec.prune_every}", f"train.eval_examples={spec.prune_examples}"] if pruning(spec) else []
    return [*spec.fixed, *prune, *extra]


def check(spec: SweepSpec, extra: list[str]) -> str:
    """Before any trial: every searched key exists, each choice composes, the objective is produced."""
    from sft_lab.config import compose, expand_heldout, validate

    for key, p in spec.space.items():
        values = list(p.choices) if p.type == "categorical" else [p.low, p.high]
        for v in values:
            v = int(v) if p.type == "int" else v
            try:
                cfg = compose([*trial_overrides(spec, extra), f"{key}={v}"])
                validate(cfg)
            except Exception as e:
                raise SweepError(f"space.{key}={v!r} does not make a valid config: {explain(e)}") from None
    cfg = compose(trial_overrides(spec, extra))
    expand_heldout(cfg.eval)
    for name in spec.objective.metrics:
        task, _, metric = name.rpartition(".")
        if not task or task not in cfg.eval.tasks:
            raise SweepError(f"objective metric {name!r}: no eval produces it (eval.tasks={list(cfg.eval.tasks)}; "
                             "name it task.metric, e.g. heldout.loss or arc_easy.acc)")
    if pruning(spec) and "heldout" not in cfg.eval.tasks and cfg.data.heldout_fraction == 0:
        raise SweepError("pruning needs a held-out split (data.heldout_fraction > 0)")
    return cfg.paths.runs_dir
