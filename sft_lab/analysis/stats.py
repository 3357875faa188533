"""Statistics for ablation tables, over seeds and eval items both.

A run's score on an item is seen as  mean + seed effect + item effect + seed×item noise.  Each
comparison is a matrix of runs × items per arm (same items in both arms). The variance of a mean,
or of a difference of arm means, gets one term per source of variance, estimated by the usual
two-way ANOVA.

A test between two rows (compare) takes the seed variance of a run mean pooled over the table's rows
(df = Σ(n_r − 1)), the row-by-item interaction as a difference of mean squares, and a t whose df
come from Satterthwaite with the seed term taken at its upper 80% confidence limit: the plain
Satterthwaite df, computed from the estimates, jump towards the item count whenever the 1–3 df seed
term comes out small by chance, and the test then rejected 8–12% of true nulls. Simulated over the
grid in benchmarks/stats/significance_simulation.py the rule holds its level (A/A ≤ 6%). Seed variance
cannot be estimated from one run, and a seed variance of exactly 0 gives no test: then nothing is claimed.

Ratio metrics (bits per byte: total bits / total bytes) enter as per-item jackknife pseudo-values,
shifted so that their mean is the ratio; their variance is the ratio's jackknife variance.
"""

from __future__ import annotations

import functools
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
    """runs × items (bits, bytes) -> runs × items jackknife pseudo-values, shifted so that each row's mean is
    its run's bits/bytes ratio (the delta method's variance runs ~11% low with heavy-tailed lengths at 60 items)."""
    bits, weights = np.asarray(bits, float), np.asarray(weights, float)
    total_bits, total_weight = bits.sum(axis=1, keepdims=True), weights.sum(axis=1, keepdims=True)
    ratio = total_bits / total_weight
    k = bits.shape[1]
    if k < 2:
        return np.broadcast_to(ratio, bits.shape).copy()
    leave_one_out = (total_bits - bits) / (total_weight - weights)
    pseudo = k * ratio - (k - 1) * leave_one_out
    return pseudo - pseudo.mean(axis=1, keepdims=True) + ratio


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
    run_df: int  # Σ(n_r − 1) over the arms with two or more runs


def pooled(arms: list[tuple[list, np.ndarray]]) -> Optional[Pooled]:
    """Pool the arms' components; None when no arm has two runs. Each arm is (item keys, runs × items). The
    interaction is averaged over pairs of arms, each on the items both have (pairs with fewer than two shared
    items are skipped), less the seed × item noise each pair's item means carry."""
    multi = [components(m) for _, m in arms if m.shape[0] > 1]
    if not multi:
        return None
    dfs = [c.n_runs - 1 for c in multi]

    def pool(values):
        return sum(v * d for v, d in zip(values, dfs)) / sum(dfs)

    inter = []
    for i in range(len(arms)):
        for j in range(i + 1, len(arms)):
            (keys_a, a), (keys_b, b) = arms[i], arms[j]
            at_b = {key: n for n, key in enumerate(keys_b)}
            both = [(n, at_b[key]) for n, key in enumerate(keys_a) if key in at_b]
            if len(both) < 2:
                continue
            a, b = a[:, [n for n, _ in both]], b[:, [m for _, m in both]]
            d = a.mean(axis=0) - b.mean(axis=0)
            noise = sum(components(m).residual / m.shape[0] for m in (a, b) if m.shape[0] > 1)
            inter.append(max(0.0, float(d.var(ddof=1)) - noise))
    return Pooled(pool(c.seed for c in multi), pool(c.residual for c in multi), pool(c.var_run_means for c in multi),
                  float(np.mean(inter)) if inter else 0.0, multi[0].n_items, sum(dfs))


def satterthwaite(terms: list[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of variance terms [(term, its df)]; a term may be negative (a difference of
    mean squares)."""
    total = sum(t for t, _ in terms)
    denom = sum(t * t / df for t, df in terms if df > 0 and t != 0)
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
        floor = c.residual / c.n_items if c.n_items > 1 else 0.0  # a run mean carries the seed × item noise at least
        terms = [(max(c.var_run_means, floor) / c.n_runs, c.n_runs - 1), (c.item / c.n_items, c.n_items - 1)]
    else:
        terms = [(c.var_item_means / c.n_items, c.n_items - 1)]
    var = sum(t for t, _ in terms)
    df = satterthwaite(terms)
    half = float(stats.t.ppf(0.5 + confidence / 2, df) * math.sqrt(var)) if var > 0 else 0.0
    return Estimate(float(y.mean()), half, df, c.n_runs > 1)


@dataclass
class SeedPool:
    """The seed variance of one column, pooled over a table's rows (each runs × the same items)."""

    run_ms: float  # variance of a run mean within its row: seed variance + seed × item noise / items
    run_df: int  # Σ(n_r − 1)
    residual: float  # seed × item noise, per item
    residual_df: int  # Σ(n_r − 1)(items − 1)


def seed_pool(mats: list[np.ndarray]) -> Optional[SeedPool]:
    """Pool the rows with two or more runs; None when there are none."""
    multi = [np.asarray(m, float) for m in mats if np.shape(m)[0] > 1]
    if not multi:
        return None
    run_df = sum(m.shape[0] - 1 for m in multi)
    run_ms = sum(float(m.mean(axis=1).var(ddof=1)) * (m.shape[0] - 1) for m in multi) / run_df
    parts = [(components(m).residual, (m.shape[0] - 1) * (m.shape[1] - 1)) for m in multi if m.shape[1] > 1]
    residual_df = sum(d for _, d in parts)
    residual = sum(r * d for r, d in parts) / residual_df if residual_df else 0.0
    return SeedPool(run_ms, run_df, residual, residual_df)


# The seed term's share of the df is taken at its upper confidence limit at this level: the plain plug-in
# Satterthwaite df rejected up to 12% of true nulls with 2 seeds (benchmarks/stats/significance_simulation.py).
DF_QUANTILE = 0.2


def _difference_terms(pool: SeedPool, c: float, ms_d: float, k: int) -> list[tuple[float, float]]:
    """Variance terms of a difference of row means: the rows' seed term (c = 1/n_a + 1/n_b, or 1/n_a against
    the fixed base), then the row-by-item interaction as a difference of mean squares when it is positive."""
    terms = [(c * pool.run_ms, pool.run_df)]
    if k > 1 and ms_d - c * pool.residual > 0:
        terms += [(ms_d / k, k - 1), (-c * pool.residual / k, pool.residual_df)]
    return terms


@functools.lru_cache(maxsize=None)
def _upper_factor(run_df: int) -> float:
    from scipy import stats

    return run_df / float(stats.chi2.ppf(DF_QUANTILE, run_df))


def _test_df(terms: list[tuple[float, float]]) -> float:
    (seed_term, run_df), rest = terms[0], terms[1:]
    return min(satterthwaite([(seed_term * _upper_factor(run_df), run_df)] + rest), 1e6)


@dataclass
class Comparison:
    diff: float  # mean(a) - mean(b)
    se: float
    df: float
    p: float  # NaN when not testable
    testable: bool = True  # False: the seeds' variance is exactly 0, so there is nothing to test against

    @property
    def half(self) -> float:
        """Half-width of the difference's 95% CI (NaN when not testable)."""
        from scipy import stats

        return float(stats.t.ppf(0.975, self.df) * self.se) if self.testable else math.nan


def compare(a: np.ndarray, b: np.ndarray, b_fixed: bool = False, pool: Optional[SeedPool] = None) -> Optional[Comparison]:
    """Two arms, runs × items each over the same items (columns paired). None when an arm has one run.

    b_fixed: arm b has no seed variance (the base model: nothing trained, scoring deterministic), so its
    single run is its exact value on each item and only a's seeds and the items are random.
    pool: the seed variance pooled over the table's rows (seed_pool); by default over these two arms.
    """
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape[0] < 2 or (b.shape[0] < 2 and not b_fixed) or a.shape[1] != b.shape[1]:
        return None
    pool = pool or seed_pool([a] if b_fixed else [a, b])
    k = a.shape[1]
    diff = float(a.mean() - b.mean())
    if pool.run_ms <= 0:
        return Comparison(diff, 0.0, math.nan, math.nan, testable=False)
    c = 1 / a.shape[0] + (0.0 if b_fixed else 1 / b.shape[0])
    ms_d = float((a.mean(axis=0) - b.mean(axis=0)).var(ddof=1)) if k > 1 else 0.0
    terms = _difference_terms(pool, c, ms_d, k)
    se = math.sqrt(sum(t for t, _ in terms))
    df = _test_df(terms)
    return Comparison(diff, se, df, float(2 * stats.t.sf(abs(diff) / se, df)))


@dataclass
class Design:
    """What the power of one test depends on: variance components and the table's shape."""

    seed: float  # seed variance of a run mean beyond item noise
    residual: float  # seed × item noise, per item
    interaction: float  # per-item variance of the difference of two rows' item effects, beyond noise
    n_a: int  # seeds of the tested row
    n_b: Optional[int]  # seeds of the reference row; None: the base model (fixed)
    items: int
    run_df: int  # df of the pooled seed variance: Σ(n_r − 1) over the table's rows
    family: int = 1  # Holm family size: the first Holm step tests at alpha / family


def power(design: Design, effect: float, alpha: float = 0.05) -> float:
    """Power of the table's two-sided test (compare) for a true difference `effect`, at Holm's first step
    (alpha / family: the effect is assumed to be the only real one in the table).

    Integrates over the pooled seed variance's chi-square (its df are few, and the test's df and SE move with
    it); the interaction terms, with the items' many df, are taken at their expected values."""
    from scipy import stats

    d = design
    if d.n_a < 2 or d.run_df < 1:
        return 0.0  # one seed: nothing is claimed
    k, c = d.items, 1 / d.n_a + (1 / d.n_b if d.n_b else 0.0)
    pool = SeedPool(d.seed + d.residual / k, d.run_df, d.residual, d.run_df * (k - 1))
    terms = _difference_terms(pool, c, d.interaction + c * d.residual, k)
    seed_term, rest = terms[0][0], terms[1:]
    fixed = sum(t for t, _ in rest)
    sd = math.sqrt(seed_term + fixed)
    if sd == 0:
        return 0.0  # no variance: not testable
    w = stats.chi2.ppf((np.arange(400) + 0.5) / 400, d.run_df) / d.run_df  # the seed mean square / its mean
    upper = seed_term * w * _upper_factor(d.run_df)
    rest_denominator = sum(t * t / df for t, df in rest)
    df = np.minimum((upper + fixed) ** 2 / (upper ** 2 / d.run_df + rest_denominator), 1e6)
    bound = stats.t.ppf(1 - alpha / (2 * d.family), df) * np.sqrt(seed_term * w + fixed)
    value = stats.norm.sf((bound - abs(effect)) / sd) + stats.norm.cdf((-bound - abs(effect)) / sd)
    return float(min(1.0, value.mean()))


def detectable_effect(design: Design, target: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true difference the table's test finds with this power (NaN when it cannot be tested)."""
    from scipy.optimize import brentq

    if power(design, 1e9, alpha) < target:
        return math.nan
    hi = 1e-6
    while power(design, hi, alpha) < target:
        hi *= 2
    return float(brentq(lambda e: power(design, e, alpha) - target, hi / 2 if hi > 1e-6 else 0.0, hi, xtol=1e-7))


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
