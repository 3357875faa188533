"""Why the tables use a variance-components t-test and not a two-level bootstrap: A/A on simulated runs.

Each run answers 300 items of fixed difficulty; its seed shifts every item's logit together (the
correlated shift real fine-tuning runs have). Two arms of n runs of the same config, 400 draws each:
a test at level 0.05 should flag about 5%. Prints a table and one JSON line (about 2 minutes).

    python benchmarks/significance_simulation.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sft_lab.analysis.stats import compare, paired_bootstrap  # noqa: E402


def simulate(rng, n, difficulty, seed_sd):
    logit = np.log(difficulty / (1 - difficulty))
    p = 1 / (1 + np.exp(-(logit[None, :] + rng.normal(0, seed_sd, (n, 1)))))
    return (rng.random((n, len(difficulty))) < p).astype(float)


def two_level_bootstrap(a, b, iters, rng):
    """Resample seeds within each arm, then items (shared by both arms); p from the null-centred spread."""
    k = a.shape[1]
    observed = a.mean() - b.mean()
    diffs = np.empty(iters)
    for i in range(iters):
        items = rng.integers(0, k, k)
        ra, rb = rng.integers(0, a.shape[0], a.shape[0]), rng.integers(0, b.shape[0], b.shape[0])
        diffs[i] = a[np.ix_(ra, items)].mean() - b[np.ix_(rb, items)].mean()
    return float(np.mean(np.abs(diffs - observed) >= abs(observed)))


def main() -> int:
    rng = np.random.default_rng(3)
    difficulty = rng.uniform(0.1, 0.9, 300)
    rows = []
    print("| seeds per arm | seed SD (logit) | seeds+items t (ours) | two-level bootstrap | item-only bootstrap |")
    print("|---|---|---|---|---|")
    for n, sd in ((3, 0.3), (4, 0.3), (5, 0.3), (4, 0.1)):
        new = boot = item = 0
        draws = 400
        for i in range(draws):
            a, b = simulate(rng, n, difficulty, sd), simulate(rng, n, difficulty, sd)
            new += compare(a, b).p < 0.05
            boot += two_level_bootstrap(a, b, 1000, rng) < 0.05
            item += paired_bootstrap(a.mean(axis=0), b.mean(axis=0), iters=1000, seed=i) < 0.05
        row = {"seeds": n, "seed_sd": sd, "t": new / draws, "two_level_bootstrap": boot / draws,
               "item_only": item / draws}
        rows.append(row)
        print(f"| {n} | {sd} | {row['t']:.1%} | {row['two_level_bootstrap']:.1%} | {row['item_only']:.1%} |")
    print(json.dumps({"draws": 400, "items": 300, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
