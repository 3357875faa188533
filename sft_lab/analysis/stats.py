"""Statistics for ablation tables: t-intervals over seeds, a paired bootstrap over eval items, Holm."""

from __future__ import annotations

import math

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


def paired_bootstrap(a, b, iters: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value that mean(a - b) is 0, resampling items (a[i] and b[i] are the same item).

    The bootstrap distribution of the mean difference is shifted to the null (centred on 0) and the
    p-value is the share of it at least as far from 0 as the observed difference.
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
