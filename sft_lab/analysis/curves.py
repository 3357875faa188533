"""Tuning curves and learning curves of an ablation (python -m sft_lab.ablate).

Tuning curve (Dodge et al. 2019, "Show Your Work", arXiv 1909.03004): the expected best dev score of t
trials drawn from an arm's finished trials, for t = 1..N, computed from those N trials without running
more. With the N scores sorted worst to best, v(1..N), E[max of t] = Σ_i v(i) · ((i/N)^t − ((i−1)/N)^t).

Learning curve: a metric against the answer tokens trained, per arm, mean over its final seeds ± a 95%
t-interval: the held-out loss and items of eval.every (`train.eval_curve` in each run's record), or the
held-out loss every train.eval_steps (`train.heldout_curve`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

MIN_TRIALS = 3  # fewer finished trials than this give no curve: it would be noise


def expected_best(values: list[float], higher_is_better: bool = True) -> list[float]:
    """E[best of t trials] for t = 1..len(values), the trials drawn with replacement from `values`."""
    v = np.asarray(values, float)
    return _expected_max(v) if higher_is_better else [-e for e in _expected_max(-v)]


def _expected_max(v: np.ndarray) -> list[float]:
    v = np.sort(v)
    n = len(v)
    i = np.arange(1, n + 1)
    return [float(np.sum(v * ((i / n) ** t - ((i - 1) / n) ** t))) for t in range(1, n + 1)]


@dataclass
class TuningCurve:
    arm: str
    values: list[float]  # the finished trials' dev scores
    curve: Optional[list[float]]  # E[best of t], t = 1..N; None with fewer than MIN_TRIALS
    pruned: int = 0


def tuning_curves(trials: dict[str, list[float]], higher_is_better: bool, pruned: Optional[dict[str, int]] = None
                  ) -> list[TuningCurve]:
    out = []
    for arm, values in trials.items():
        curve = expected_best(values, higher_is_better) if len(values) >= MIN_TRIALS else None
        out.append(TuningCurve(arm, list(values), curve, (pruned or {}).get(arm, 0)))
    return out


def ranking_by_budget(curves: list[TuningCurve], higher_is_better: bool) -> list[tuple[int, list[str]]]:
    """The arms' order (best first) at each budget t that every curve reaches."""
    drawn = [c for c in curves if c.curve]
    if len(drawn) < 2:
        return []
    t_max = min(len(c.curve) for c in drawn)
    out = []
    for t in range(1, t_max + 1):
        order = sorted(drawn, key=lambda c: c.curve[t - 1], reverse=higher_is_better)
        out.append((t, [c.arm for c in order]))
    return out


def ranking_sentence(curves: list[TuningCurve], higher_is_better: bool) -> str:
    """Whether the arms' ranking changes with the tuning budget, in words."""
    short = [f"{c.arm} ({len(c.values)} finished trials)" for c in curves if not c.curve]
    note = (f" No curve for {', '.join(short)}: a tuning curve needs at least {MIN_TRIALS} finished trials."
            if short else "")
    ranks = ranking_by_budget(curves, higher_is_better)
    if not ranks:
        return "Fewer than two arms have a tuning curve, so no ranking by budget." + note
    changes = [(t, order) for (t, order), (_, before) in zip(ranks[1:], ranks[:-1]) if order != before]
    first = " > ".join(ranks[0][1])
    if not changes:
        return (f"The ranking of the arms by expected best dev score is the same at every budget from 1 to "
                f"{ranks[-1][0]} trials: {first}." + note)
    steps = "; ".join(f"from {t} trials: {' > '.join(order)}" for t, order in changes)
    return (f"The ranking of the arms changes with the tuning budget: with 1 trial {first}; {steps}. A comparison "
            "at a smaller budget would have ranked them differently." + note)


@dataclass
class LearningCurve:
    arm: str
    metric: str  # heldout/loss, or task/metric
    tokens: list[float]  # mean answer tokens trained at each evaluation
    mean: list[float]
    half: list[Optional[float]]  # 95% t half-width over seeds (None with one seed)
    seeds: int


def run_curve(train: dict) -> list[dict]:
    """A run's learning curve: points of {step, answer_tokens, metric: value}."""
    if train.get("eval_curve"):
        return list(train["eval_curve"])
    return [{"step": h["step"], "answer_tokens": h.get("answer_tokens"), "heldout/loss": h["loss"]}
            for h in train.get("heldout_curve") or []]


def curve_metrics(curves: list[list[dict]]) -> list[str]:
    """The metrics the runs' curves hold, in their order."""
    return list(dict.fromkeys(k for c in curves for p in c for k in p if k not in ("step", "answer_tokens")))


def learning_curve(arm: str, curves: list[list[dict]], metric: str = "heldout/loss") -> Optional[LearningCurve]:
    """One arm's curve of `metric` from its runs' curves (points matched by their order)."""
    from scipy import stats as st

    curves = [[p for p in c if p.get(metric) is not None] for c in curves]
    curves = [c for c in curves if c]
    if not curves:
        return None
    n = min(len(c) for c in curves)
    tokens, mean, half = [], [], []
    for j in range(n):
        xs = [c[j].get("answer_tokens") for c in curves]
        ys = np.array([c[j][metric] for c in curves], float)
        tokens.append(float(np.mean([x for x in xs if x is not None])) if any(x is not None for x in xs) else math.nan)
        mean.append(float(ys.mean()))
        half.append(float(st.t.ppf(0.975, len(ys) - 1) * ys.std(ddof=1) / math.sqrt(len(ys))) if len(ys) > 1 else None)
    return LearningCurve(arm, metric, tokens, mean, half, len(curves))
