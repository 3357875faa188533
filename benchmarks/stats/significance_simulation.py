"""Does the table's † hold its level, and do its power figures tell the truth? Simulated tables, known truth.

Binary items (sft_lab/analysis/simulation.py): every cell of the grid
    items k ∈ {60, 200, 1000} × seeds n ∈ {2, 3, 4} × seed shift SD {0.005, 0.02} (accuracy)
    × seeds disagreeing on {5%, 15%} of items × against the fixed base model / between two trained rows
runs --draws simulated tables with no true difference (A/A) and with a true difference of 0.02 and 0.05.
Each table has --rows trained rows whose seed variance the test pools. Per cell it prints the A/A rate of
the table's test (stats.compare) and of the t over seed means, their power, and the power the table
predicts (stats.power, the function behind the "min. detectable Δ" row and analysis/plan.py) from the
variance components. The JSON also holds each test's size-adjusted power (at the p threshold that gives it
exactly 5% in its own A/A draws), so the two tests are compared at equal size. Then one JSON line. About 20
minutes on 2 CPU cores at 600 draws.

    python -m benchmarks.stats.significance_simulation
    python -m benchmarks.stats.significance_simulation --draws 200 --items 200 --seeds 2   # a few cells
    python -m benchmarks.stats.significance_simulation --against arm --items 200,1000      # trained rows only
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor


from sft_lab.analysis.simulation import Setting, run_cell  # noqa: E402


def _run(args: tuple) -> dict:
    setting, draws, seed = args
    return run_cell(setting, draws, effects=(0.02, 0.05), seed=seed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", type=int, default=600, help="simulated tables per cell and effect")
    p.add_argument("--items", default="60,200,1000")
    p.add_argument("--seeds", default="2,3,4")
    p.add_argument("--rows", type=int, default=2, help="trained rows per table (their seed variance is pooled)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--against", default="base,arm", help="base, arm or both (base,arm)")
    args = p.parse_args()
    grid = [Setting(k, n, shift, dis, base, args.rows)
            for base, dis, shift, k, n in itertools.product(
                [a == "base" for a in args.against.split(",")], (0.05, 0.15), (0.005, 0.02),
                [int(x) for x in args.items.split(",")], [int(x) for x in args.seeds.split(",")])]
    start = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        cells = list(pool.map(_run, [(s, args.draws, i) for i, s in enumerate(grid)]))
    se = math.sqrt(0.05 * 0.95 / args.draws)
    print(f"{args.draws} simulated tables per cell and effect, {args.rows} trained rows per table; "
          f"nominal level 5% (simulation SE {se:.1%}).\n")
    print("| against | disagree | seed SD | items | seeds | A/A ours | A/A seed-mean t | power 0.02 ours / seed-mean t "
          "/ predicted | power 0.05 ours / seed-mean t / predicted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        print(f"| {c['against']} | {c['disagreement']:.0%} | {c['shift_sd']} | {c['items']} | {c['seeds']} | "
              f"{c['aa']:.1%} | {c['aa_seed_mean_t']:.1%} | "
              + " | ".join(f"{c[f'power_{e}']:.2f} / {c[f'power_{e}_seed_mean_t']:.2f} / {c[f'power_{e}_predicted']:.2f}"
                           for e in ("0.02", "0.05")) + " |")
    # where the seed-mean t holds its level, the table's test should be no less powerful (within 2 SE)
    weaker = [c for c in cells for e in ("0.02", "0.05") if c["aa_seed_mean_t"] <= 0.06
              and c[f"power_{e}"] < c[f"power_{e}_seed_mean_t"] - 2 * math.sqrt(0.25 / args.draws)]
    # the same at equal size: each test at its own simulated 5% null quantile of p (size-adjusted power)
    weaker_adjusted = [(c["against"], c["disagreement"], c["shift_sd"], c["items"], c["seeds"], e)
                       for c in cells for e in ("0.02", "0.05") if c["aa_seed_mean_t"] <= 0.06
                       and c[f"power_{e}_size_adjusted"] < c[f"power_{e}_seed_mean_t_size_adjusted"]
                       - 2 * math.sqrt(0.25 / args.draws)]
    summary = {
        "draws": args.draws, "rows": args.rows, "n_cells": len(cells), "seconds": round(time.time() - start),
        "max_aa": max(c["aa"] for c in cells), "max_aa_seed_mean_t": max(c["aa_seed_mean_t"] for c in cells),
        "cells_aa_over_6pct": sum(c["aa"] > 0.06 for c in cells),
        "max_power_error": max(abs(c[f"power_{e}"] - c[f"power_{e}_predicted"]) for c in cells for e in ("0.02", "0.05")),
        "weaker_than_seed_mean_t_where_it_holds": len(weaker),
        "weaker_at_equal_size": weaker_adjusted,
        "cells": cells,
    }
    print(f"\nA/A: at most {summary['max_aa']:.1%} (seed-mean t: {summary['max_aa_seed_mean_t']:.1%}); "
          f"{summary['cells_aa_over_6pct']} cell(s) over 6%. Predicted power within "
          f"{summary['max_power_error']:.3f} of simulated. Less powerful than the seed-mean t where that t holds its "
          f"level (by more than 2 SE): {len(weaker)} cell(s); at equal size (size-adjusted power): "
          f"{len(weaker_adjusted)}.")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
