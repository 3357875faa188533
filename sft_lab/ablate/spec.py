"""Ablation files: the arms, the per-arm search, the final seeds and tasks; checked before anything runs.

    study_name: lora_rank
    arms: {lora: [r8, r16]}                      # the compared factors, as a grid: one arm per combination
    tune: {lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}   # searched per arm (sweep syntax)
    trials: 8                                     # per arm, on dev items
    tuning_seeds: [0]
    seeds: [1, 2, 3]                              # the final runs: fresh seeds, on test items
    objective: {metrics: [arc_easy.acc], direction: maximize}
    final: [arc_easy, ifeval]                     # eval.tasks of the final runs ([]: the tuning's tasks)
    final_overrides: [eval.limit=300]             # other settings of the final runs only
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, OmegaConf

from sft_lab.errors import UserError
from sft_lab.sweep.spec import ObjectiveSpec, ParamSpec, SweepSpec


class AblateError(UserError):
    pass


@dataclass
class CurveSpec:
    """The final runs' learning curve: every `every_tokens` answer tokens, the held-out loss and `limit` test
    items of each of `tasks` (null: the final benchmarks); 0: the held-out loss every prune_every steps."""

    every_tokens: int = 0
    tasks: Optional[List[str]] = None
    limit: int = 50


@dataclass
class AblateSpec:
    study_name: str = MISSING
    arms: Dict[str, List[Any]] = field(default_factory=dict)  # factor -> levels; the arms are their grid
    tune: Dict[str, ParamSpec] = field(default_factory=dict)  # searched per arm
    trials: int = 8  # per arm
    tuning_seeds: List[int] = field(default_factory=lambda: [0])
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])  # final runs; never a tuning seed
    objective: ObjectiveSpec = field(default_factory=lambda: ObjectiveSpec(["heldout.bits_per_byte"], "minimize"))
    final: List[str] = field(default_factory=list)  # eval.tasks of the final runs; []: the tuning runs' tasks
    fixed: List[str] = field(default_factory=list)  # Hydra overrides for every run
    final_overrides: List[str] = field(default_factory=list)  # ... and for the final runs only, e.g. eval.limit=150
    sampler: Dict[str, Any] = field(default_factory=dict)  # as a sweep's (tpe by default), one study per arm
    pruner: Dict[str, Any] = field(default_factory=dict)  # as a sweep's (median by default)
    prune_every: int = 10  # steps between held-out losses: the pruner's signal and the learning curve's points
    prune_examples: int = 32
    curve: CurveSpec = field(default_factory=CurveSpec)
    storage: Optional[str] = None  # default: sqlite:///<runs_dir>/optuna.db
    heartbeat_s: int = 10
    grace_s: int = 60


def arm_overrides(spec: AblateSpec) -> list[tuple[str, list[str]]]:
    """(label, overrides) per arm, in the grid's order."""
    keys = list(spec.arms)
    out = []
    for values in itertools.product(*(spec.arms[k] for k in keys)):
        out.append((",".join(f"{k}={v}" for k, v in zip(keys, values)), [f"{k}={v}" for k, v in zip(keys, values)]))
    return out


def arm_sweep(spec: AblateSpec, label: str, overrides: list[str]) -> SweepSpec:
    """One arm's tuning as a sweep: its own Optuna study, dev items only."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SweepSpec), {
        "study_name": f"{spec.study_name}/{label}", "fixed": [*spec.fixed, *overrides, "eval.split=dev"],
        "space": OmegaConf.to_container(OmegaConf.structured(spec).tune), "objective": spec.objective,
        "sampler": spec.sampler, "pruner": spec.pruner, "prune_every": spec.prune_every,
        "prune_examples": spec.prune_examples, "n_trials": spec.trials, "seeds": spec.tuning_seeds,
        "storage": spec.storage, "heartbeat_s": spec.heartbeat_s, "grace_s": spec.grace_s}))


def load_spec(path: str) -> AblateSpec:
    if not Path(path).is_file():
        raise AblateError(f"ablation file {path} does not exist")
    import yaml

    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise AblateError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    try:
        spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AblateSpec), OmegaConf.load(path)))
    except Exception as e:
        raise AblateError(f"{path}: {str(e).splitlines()[0]} ({getattr(e, 'full_key', '')})") from None
    check(spec, path)
    return spec


def check(spec: AblateSpec, path: str = "the ablation file") -> None:
    """The mistakes that would waste the whole ablation, each named."""
    if not spec.arms or any(not levels for levels in spec.arms.values()):
        raise AblateError(f"{path}: arms needs at least one factor with its levels, e.g. arms: {{data: [alpaca, dolly]}}")
    if len(arm_overrides(spec)) < 2:
        raise AblateError(f"{path}: arms gives one arm; an ablation compares at least two")
    if not spec.tune:
        raise AblateError(f"{path}: tune is empty; name what is tuned per arm, e.g. tune: {{lr: {{type: float, "
                          "low: 1.0e-5, high: 1.0e-3, log: true}}")
    both = sorted(set(spec.arms) & set(spec.tune))
    if both:
        raise AblateError(f"{path}: {', '.join(both)} is both an arm factor and a tune key; an arm fixes it, the "
                          "tuning searches it: keep it in one of arms or tune")
    fixed_keys = {o.lstrip("+~").partition("=")[0] for o in spec.fixed}
    clash = sorted(fixed_keys & (set(spec.arms) | set(spec.tune)))
    if clash:
        raise AblateError(f"{path}: fixed sets {', '.join(clash)}, which arms or tune also set")
    if spec.trials < 1:
        raise AblateError(f"{path}: trials must be at least 1, got {spec.trials}")
    if not spec.seeds:
        raise AblateError(f"{path}: seeds (the final runs' seeds) is empty")
    reused = sorted(set(spec.seeds) & set(spec.tuning_seeds))
    if reused:
        raise AblateError(f"{path}: final seed(s) {reused} are also tuning seeds; the final runs replicate each arm's "
                          "best configuration with fresh seeds (e.g. tuning_seeds: [0], seeds: [1, 2, 3])")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise AblateError(f"{path}: seeds {spec.seeds} repeats a seed")
    if spec.curve.every_tokens < 0 or spec.curve.limit < 1:
        raise AblateError(f"{path}: curve.every_tokens must be >= 0 (0: the held-out loss every prune_every steps) and "
                          f"curve.limit >= 1; got every_tokens={spec.curve.every_tokens}, limit={spec.curve.limit}")
    outside = [t for t in spec.curve.tasks or [] if spec.final and t not in spec.final]
    if outside:
        raise AblateError(f"{path}: curve.tasks {outside} are not among the final tasks {spec.final}")
    for name in spec.objective.metrics:
        if name.startswith("heldout.loss"):
            raise AblateError(f"{path}: objective {name} reads the held-out examples, which eval.split does not "
                              "divide into dev and test; use an item metric, e.g. heldout.bits_per_byte or arc_easy.acc")
