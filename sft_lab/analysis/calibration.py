"""A/A calibration: runs of one config that differ only in the seed, split at random into two arms.

Any difference between the arms is noise, so a test at level 0.05 should flag about 5% of splits.
Used by the real-run tests (toy setting) and by benchmarks/stats/aa_calibration.py (SmolLM2).
"""

from __future__ import annotations

import numpy as np

from sft_lab.analysis.stats import compare, components, paired_bootstrap


def aa_rates(matrix: np.ndarray, splits: int = 200, per_arm: int = 4, alpha: float = 0.05, seed: int = 0,
             bootstrap_iters: int = 2000) -> dict:
    """False-positive rates of the seeds+items test and of the item-only test over random splits."""
    rng = np.random.default_rng(seed)
    n = matrix.shape[0]
    if n < 2 * per_arm:
        raise ValueError(f"{n} runs cannot make two arms of {per_arm}")
    new = old = 0
    for i in range(splits):
        order = rng.permutation(n)
        a, b = matrix[order[:per_arm]], matrix[order[per_arm:2 * per_arm]]
        new += compare(a, b).p < alpha
        old += paired_bootstrap(a.mean(axis=0), b.mean(axis=0), iters=bootstrap_iters, seed=i) < alpha
    c = components(matrix)
    binary = set(np.unique(matrix)) <= {0.0, 1.0}
    return {"runs": n, "items": matrix.shape[1], "splits": splits, "per_arm": per_arm,
            "rate_seeds_items": new / splits, "rate_item_only": old / splits,
            "between_seed_sd": float(np.sqrt(c.var_run_means)), "seed_sd_beyond_items": float(np.sqrt(c.seed)),
            "item_disagreement": float(np.mean(matrix.min(axis=0) != matrix.max(axis=0))) if binary else None}


def aa_independent(matrix: np.ndarray, per_arm: int = 2, alpha: float = 0.05) -> dict:
    """A/A on disjoint arms: runs 1..per_arm against the next per_arm, and so on, each run used once, so the
    comparisons are independent (re-splits of one set of runs are one realisation, not a calibration)."""
    pairs = matrix.shape[0] // (2 * per_arm)
    if pairs < 1:
        raise ValueError(f"{matrix.shape[0]} runs cannot make two arms of {per_arm}")
    results = [compare(matrix[2 * i * per_arm:(2 * i + 1) * per_arm], matrix[(2 * i + 1) * per_arm:(2 * i + 2) * per_arm])
               for i in range(pairs)]
    tested = [r for r in results if r is not None and r.testable]
    return {"comparisons": pairs, "tested": len(tested), "flagged": sum(r.p < alpha for r in tested),
            "per_arm": per_arm, "p": [round(r.p, 4) for r in tested]}
