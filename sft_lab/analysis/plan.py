"""Power planning: from pilot runs, how many seeds and eval items detect a given effect.

Pilot runs are grouped into configs (every factor but the seed). Within each config the seeds give
the seed variance and the seed×item noise; across configs, paired items give the item-by-config
interaction (how much an effect varies from item to item). Then, for two arms of n seeds on I
shared items, the SE of their difference and the power of the table's test follow (stats.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from sft_lab.analysis import stats
from sft_lab.analysis.table import NOT_FACTORS, Items


@dataclass
class Pilot:
    metric: str
    configs: int
    runs: int
    items: int
    seed: float  # seed variance of a run mean beyond item noise
    residual: float  # seed x item noise, per item
    interaction: float  # item x config variance of a difference (0 when one config)


def estimate(df: pd.DataFrame, metric: str, seeds: str = "seed") -> Pilot:
    runs = df[~df["baseline"]] if "baseline" in df else df
    if f"eval/{metric}" not in runs:
        have = sorted(c[5:] for c in runs.columns if c.startswith("eval/"))
        raise ValueError(f"--metric {metric!r} is not in the runs; they have {', '.join(have)}")
    keys = [c for c in runs.columns if not c.startswith(NOT_FACTORS) and not c.startswith(("eval/", "stderr/"))
            and c != seeds and runs[c].map(str).nunique() > 1]
    groups = [g for _, g in runs.groupby(keys, dropna=False)] if keys else [runs]
    items = Items()
    mats = []
    for g in groups:
        dirs = [d for d in g["run_dir"].tolist() if d]
        shared = items.shared_keys(dirs, metric)
        if shared:
            mats.append(items.matrix(dirs, metric, shared))
    pool = stats.pooled(mats)
    if pool is None:
        raise ValueError(f"{metric}: no config has two or more seeds with per-item results; "
                         "run a pilot with seed=0,1,2 (or more) first")
    return Pilot(metric, len(mats), sum(m.shape[0] for m in mats), pool.n_items, pool.seed, pool.residual,
                 pool.interaction)


def power(pilot: Pilot, effect: float, n_seeds: int, n_items: int, alpha: float = 0.05) -> float:
    """Power of the two-sided test for a true difference `effect` between two arms."""
    from scipy import stats as sps

    if n_seeds < 2:
        return 0.0  # the table claims nothing with one seed
    seed_term = 2 * (pilot.seed + pilot.residual / n_items) / n_seeds
    terms = [(seed_term, 2 * (n_seeds - 1)), (pilot.interaction / n_items, n_items - 1)]
    se = math.sqrt(sum(t for t, _ in terms))
    if se == 0:
        return 1.0
    df = min(stats.satterthwaite(terms), 1e6)
    crit = sps.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) / se
    value = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
    if not math.isfinite(value):  # the noncentral t's tail fails far out: the normal is exact enough there
        value = sps.norm.sf(crit - nc) + sps.norm.cdf(-crit - nc)
    return float(min(1.0, value))


def plan(pilot: Pilot, effect: float, target: float = 0.8, seeds=(2, 3, 4, 5, 8, 10, 16, 32),
         items=None) -> dict:
    """Power over a grid of seeds x items, and the fewest seeds that reach `target` at each item count."""
    items = items or sorted({pilot.items, 100, 200, 500, 1000, 2000, 5000})
    grid = {n: {k: power(pilot, effect, n, k) for k in items} for n in seeds}
    fewest = {k: next((n for n in seeds if grid[n][k] >= target), None) for k in items}
    return {"grid": grid, "fewest_seeds": fewest, "items": items, "seeds": list(seeds)}
