"""Power planning: from pilot runs, how many seeds and eval items detect a given effect.

Pilot runs are grouped into configs (every factor but the seed). Within each config the seeds give
the seed variance and the seed×item noise; across configs, paired items give the item-by-config
interaction (how much an effect varies from item to item), each pair of configs on the items both have.
Then the power of the table's own test (stats.power) follows for n seeds on I items: against the base
model or another row, its seed variance pooled over the table's rows, Holm at the table's family size.
"""

from __future__ import annotations

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
    arms = []
    for g in groups:
        dirs = [d for d in g["run_dir"].tolist() if d]
        shared = items.shared_keys(dirs, metric)
        if shared:
            arms.append((shared, items.matrix(dirs, metric, shared)))
    pool = stats.pooled(arms)
    if pool is None:
        raise ValueError(f"{metric}: no config has two or more seeds with per-item results; "
                         "run a pilot with seed=0,1,2 (or more) first")
    return Pilot(metric, len(arms), sum(m.shape[0] for _, m in arms), pool.n_items, pool.seed, pool.residual,
                 pool.interaction)


@dataclass
class Table:
    """The table the planned runs will make: what its test compares, and how many tests it holds."""

    against_base: bool = True  # each row against the base model (--ref base); False: against a trained row
    rows: int = 2  # trained rows: their seed variance is pooled (df = rows × (seeds − 1))
    tests: int = 1  # Holm family size (rows × columns tested); 1: no correction


def power(pilot: Pilot, effect: float, n_seeds: int, n_items: int, alpha: float = 0.05, table: Table = Table()) -> float:
    """Power of the table's two-sided test (stats.compare) for a true difference `effect`."""
    design = stats.Design(pilot.seed, pilot.residual, pilot.interaction, n_seeds,
                          None if table.against_base else n_seeds, n_items, table.rows * (n_seeds - 1), table.tests)
    return stats.power(design, effect, alpha)


def plan(pilot: Pilot, effect: float, target: float = 0.8, seeds=(2, 3, 4, 5, 8, 10, 16, 32),
         items=None, table: Table = Table(), alpha: float = 0.05) -> dict:
    """Power over a grid of seeds x items, and the fewest seeds that reach `target` at each item count."""
    items = items or sorted({pilot.items, 100, 200, 500, 1000, 2000, 5000})
    grid = {n: {k: power(pilot, effect, n, k, alpha, table) for k in items} for n in seeds}
    fewest = {k: next((n for n in seeds if grid[n][k] >= target), None) for k in items}
    return {"grid": grid, "fewest_seeds": fewest, "items": items, "seeds": list(seeds)}
