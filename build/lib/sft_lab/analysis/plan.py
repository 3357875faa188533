"""Power planning: from pilot runs, how many seeds and eval items detect a given effect.

Pilot runs are grouped into configs (every factor but the seed). Within each config the seeds give
the seed variance and the seed×item noise; across configs, paired items give the item-by-config
interaction (how much an effect varies from item to item), each pair of configs on the items both have.
Then the power of the table's own test (stats.power) follows for n seeds on I items: against the base
model or another row, its seed variance pooled over the table's rows, Holm at the table's family size.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import pandas as pd

from sft_lab.analysis import stats
from sft_lab.analysis.collect import collect
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


CLI_DOC = """How many seeds and eval items does it take to detect an effect? Estimated from pilot runs.

    sft-lab-plan runs/ --metric arc_easy/acc --effect 0.01
    sft-lab-plan runs/ --metric heldout/bits_per_byte --effect 0.005 --power 0.9

The pilot needs at least one config with two or more seeds (per-item results in samples/). With
several configs, the item-by-config interaction is estimated too; with one it is taken as 0, so
the answer is a lower bound. The power is that of the table's own test: against the base model
(--against base, the default) or another trained row (--against row), the seed variance pooled over
--rows trained rows, at Holm's first step over --tests tests (the whole table's family; it assumes the
effect is the only real difference). Prints the variance components, a power grid (seeds x items),
the fewest seeds per item count, then one JSON line.
"""


def main() -> int:
    p = argparse.ArgumentParser(prog="sft-lab-plan", description=CLI_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir", help="folder of pilot runs (record.json + samples/)")
    p.add_argument("--metric", required=True, help="TASK/METRIC, e.g. arc_easy/acc or heldout/bits_per_byte")
    p.add_argument("--effect", type=float, required=True, help="the true difference to detect, in the metric's units")
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seeds", default="seed", help="the key whose values are replicates (default: seed)")
    p.add_argument("--against", choices=["base", "row"], default="base",
                   help="what the table tests against: the base model (--ref base) or a trained row (--ref KEY=VALUE)")
    p.add_argument("--rows", type=int, default=2, help="trained rows in the planned table (their seed variance is pooled)")
    p.add_argument("--tests", type=int, default=1,
                   help="tests in the planned table (rows x columns): Holm's family size; 1 = no correction")
    args = p.parse_args()
    if args.effect == 0 or not 0 < args.power < 1 or args.rows < 1 or args.tests < 1:
        print("error: --effect must be non-zero, --power in (0, 1), --rows and --tests at least 1", file=sys.stderr)
        return 2
    df, _ = collect(args.runs_dir)
    if df.empty:
        print(f"error: no finished runs in {args.runs_dir}", file=sys.stderr)
        return 2
    try:
        pilot = estimate(df, args.metric, args.seeds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = Table(args.against == "base", args.rows, args.tests)
    result = plan(pilot, args.effect, args.power, table=table, alpha=args.alpha)
    print(f"Pilot: {pilot.runs} runs in {pilot.configs} config(s), {pilot.items} items of {args.metric}")
    print(f"  seed SD (run mean, beyond item noise) {pilot.seed ** 0.5:.4f}; seed x item noise SD {pilot.residual ** 0.5:.4f}; "
          f"item x config SD {pilot.interaction ** 0.5:.4f}" + ("" if pilot.configs > 1 else " (one config: taken as 0)"))
    print(f"\nPower of the table's test to detect a difference of {args.effect:g} against "
          + ("the base model" if table.against_base else "a trained row")
          + f" (two-sided, alpha {args.alpha}" + (f", Holm over {table.tests} tests" if table.tests > 1 else "")
          + f"; seed variance pooled over {table.rows} row(s)), seeds per row x items:\n")
    print("| seeds | " + " | ".join(f"{k} items" for k in result["items"]) + " |")
    print("|---|" + "---|" * len(result["items"]))
    for n in result["seeds"]:
        print(f"| {n} | " + " | ".join(f"{result['grid'][n][k]:.2f}" for k in result["items"]) + " |")
    print()
    for k, n in result["fewest_seeds"].items():
        print(f"{k:>6} items: " + (f"{n} seeds per arm reach {args.power:.0%} power" if n else
                                   f"more than {result['seeds'][-1]} seeds per arm needed"))
    print(json.dumps({"metric": args.metric, "effect": args.effect, "power": args.power, "pilot": pilot.__dict__,
                      "table": table.__dict__,
                      "fewest_seeds": {str(k): v for k, v in result["fewest_seeds"].items()}}))
    return 0

