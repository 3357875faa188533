"""Statistics for ablation tables, over seeds and eval items both.

A run's score on an item is seen as  mean + seed effect + item effect + seed×item noise.  Each
comparison is a matrix of runs × items per arm (same items in both arms). The variance of a mean,
or of a difference of arm means, gets one term per source of variance, estimated by the usual
two-way ANOVA, and a t reference distribution with Welch–Satterthwaite degrees of freedom. For a
balanced design this is what a linear mixed model with crossed random seed and item effects gives,
without fitting one. Seed variance cannot be estimated from one run: then nothing is claimed.

Ratio metrics (bits per byte: total bits / total bytes) enter as per-item pseudo-values whose mean is
the ratio and whose variance is the ratio's delta-method variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


def t_interval(values, confidence: float = 0.95) -> tuple[float, float | None, int]:
    """(mean, half-width of the t-interval, n); the half-width is None for a single value."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, None, 0
    if n == 1:
        return float(x[0]), None, 1
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(half), n


def pseudo_values(bits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """runs × items (bits, bytes) -> runs × items values whose row mean is each run's bits/bytes ratio."""
    bits, weights = np.asarray(bits, float), np.asarray(weights, float)
    ratio = bits.sum(axis=1, keepdims=True) / weights.sum(axis=1, keepdims=True)
    return ratio + (bits - ratio * weights) / weights.mean(axis=1, keepdims=True)


@dataclass
class Components:
    """Variance components of one runs × items matrix."""

    n_runs: int
    n_items: int
    var_run_means: float  # between-run variance of the run means (NaN for one run)
    var_item_means: float  # between-item variance of the item means (over runs)
    residual: float  # seed × item noise (NaN for one run)

    @property
    def seed(self) -> float:
        """Seed variance beyond what item noise explains (>= 0)."""
        return max(0.0, self.var_run_means - self.residual / self.n_items) if self.n_runs > 1 else math.nan

    @property
    def item(self) -> float:
        return max(0.0, self.var_item_means - (self.residual / self.n_runs if self.n_runs > 1 else 0.0))


def components(y: np.ndarray) -> Components:
    y = np.asarray(y, float)
    n, k = y.shape
    run_means, item_means = y.mean(axis=1), y.mean(axis=0)
    if n > 1 and k > 1:
        resid = y - run_means[:, None] - item_means[None, :] + y.mean()
        residual = float((resid ** 2).sum() / ((n - 1) * (k - 1)))
    else:
        residual = math.nan
    return Components(n, k, float(run_means.var(ddof=1)) if n > 1 else math.nan,
                      float(item_means.var(ddof=1)) if k > 1 else 0.0, residual)


@dataclass
class Pooled:
    """Variance components pooled over several arms (each runs × items): what a power calculation needs."""

    seed: float  # seed variance, df-weighted over the arms with two or more runs
    residual: float  # seed × item noise
    var_run_means: float
    interaction: float  # item × arm: how much arms differ item by item beyond noise
    n_items: int


def pooled(mats: list[np.ndarray]) -> Optional[Pooled]:
    """Pool the arms' components; None when no arm has two runs. The interaction is averaged over
    pairs of arms on the same items, less the seed × item noise each pair's item means carry."""
    multi = [components(m) for m in mats if m.shape[0] > 1]
    if not multi:
        return None
    dfs = [c.n_runs - 1 for c in multi]

    def pool(values):
        return sum(v * d for v, d in zip(values, dfs)) / sum(dfs)

    inter = []
    for i in range(len(mats)):
        for j in range(i + 1, len(mats)):
            if mats[i].shape[1] == mats[j].shape[1]:
                d = mats[i].mean(axis=0) - mats[j].mean(axis=0)
                noise = sum(components(m).residual / m.shape[0] for m in (mats[i], mats[j]) if m.shape[0] > 1)
                inter.append(max(0.0, float(d.var(ddof=1)) - noise))
    return Pooled(pool(c.seed for c in multi), pool(c.residual for c in multi),
                  pool(c.var_run_means for c in multi), float(np.mean(inter)) if inter else 0.0, multi[0].n_items)


def satterthwaite(terms: list[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of variance terms [(term, its df)]."""
    total = sum(t for t, _ in terms)
    denom = sum(t * t / df for t, df in terms if df > 0 and t > 0)
    return total * total / denom if denom > 0 else math.inf


@dataclass
class Estimate:
    mean: float
    half: float  # 95% half-width
    df: float
    seeds_measured: bool  # False: one run, so the interval covers item variance only


def interval(y: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Mean of a runs × items matrix and a CI over both seeds and items (items only for one run)."""
    from scipy import stats

    c = components(y)
    y = np.asarray(y, float)
    if c.n_runs > 1:
        terms = [_run_term(c), (c.item / c.n_items, c.n_items - 1)]
    else:
        terms = [(c.var_item_means / c.n_items, c.n_items - 1)]
    var = sum(t for t, _ in terms)
    df = satterthwaite(terms)
    half = float(stats.t.ppf(0.5 + confidence / 2, df) * math.sqrt(var)) if var > 0 else 0.0
    return Estimate(float(y.mean()), half, df, c.n_runs > 1)


@dataclass
class Comparison:
    diff: float  # mean(a) - mean(b)
    se: float
    df: float
    p: float

    @property
    def half(self) -> float:
        """Half-width of the difference's 95% CI."""
        from scipy import stats

        return float(stats.t.ppf(0.975, self.df) * self.se) if self.se > 0 else 0.0


def _run_term(c: Components) -> tuple[float, float]:
    """An arm mean's variance from its runs, with its df. Each run mean carries the seed×item noise
    (residual / items) at least; with few seeds the spread of run means can fall below that by chance (two
    seeds with equal means give 0), which would make any difference look exact, so it is floored there."""
    floor = c.residual / c.n_items if c.n_items > 1 else 0.0
    return max(c.var_run_means, floor) / c.n_runs, c.n_runs - 1  # the df stay the seeds': their spread is unknown


def compare(a: np.ndarray, b: np.ndarray, b_fixed: bool = False) -> Optional[Comparison]:
    """Two arms, runs × items each over the same items (columns paired). None when an arm has one run.

    b_fixed: arm b has no seed variance (the base model: nothing trained, scoring deterministic), so its
    single run is its exact value on each item and only a's seeds and the items are random.
    """
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape[0] < 2 or (b.shape[0] < 2 and not b_fixed) or a.shape[1] != b.shape[1]:
        return None
    ca, cb = components(a), components(b)
    k = a.shape[1]
    d_items = a.mean(axis=0) - b.mean(axis=0)
    item_var = float(d_items.var(ddof=1)) if k > 1 else 0.0
    b_noise = 0.0 if b_fixed else cb.residual / cb.n_runs
    interaction = max(0.0, item_var - ca.residual / ca.n_runs - b_noise) if k > 1 else 0.0
    terms = [_run_term(ca), (interaction / k, k - 1)]
    if not b_fixed:
        terms.insert(1, _run_term(cb))
    var = sum(t for t, _ in terms)
    diff = float(a.mean() - b.mean())
    if var <= 0:
        return Comparison(diff, 0.0, math.inf, 1.0 if diff == 0 else 0.0)
    df = satterthwaite(terms)
    se = math.sqrt(var)
    return Comparison(diff, se, df, float(2 * stats.t.sf(abs(diff) / se, df)))


def detectable_effect(se: float, df: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true difference a two-sided level-alpha t-test finds with this power, given its SE."""
    from scipy import stats

    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def planned_se(seed: float, residual: float, interaction: float, n_seeds: int, n_items: int) -> float:
    """SE of a difference of two arm means with n_seeds runs each on n_items shared items."""
    return math.sqrt(2 * (seed / n_seeds + residual / (n_seeds * n_items)) + interaction / n_items)


def paired_bootstrap(a, b, iters: int = 10_000, seed: int = 0) -> float:
    """Item-only test (the tables' test before seeds were counted), kept to measure it against.

    Two-sided p-value that mean(a - b) is 0, resampling items of two per-item vectors.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) == 0:
        return math.nan
    observed = d.mean()
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(iters, len(d)))].mean(axis=1)
    return float(np.mean(np.abs(means - observed) >= abs(observed) - 1e-12))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (NaNs stay NaN and are not counted)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
