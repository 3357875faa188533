"""Simulated tables with a known truth, to check the table's test (stats.compare) and its power figures.

Binary items, as benchmarks score them. Item i of row r, seed s is right when
    item difficulty + base item effect + row item effect + seed shift + seed×item noise + effect > 0
(normal latent terms). The base model is one run without a seed shift. Under the null every row and
the base have the same accuracy over the population of items (0.5, by symmetry); `effect` moves row 0's
accuracy by that much. The seed shift and the seed×item noise are set to give a run-level SD and a
share of items on which two seeds disagree, both in accuracy units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sft_lab.analysis import stats

ITEM_SD, BASE_ITEM_SD, ROW_ITEM_SD = 1.0, 0.5, 0.2


@dataclass
class Setting:
    items: int
    seeds: int  # per trained row
    shift_sd: float  # SD of a run's accuracy from its seed
    disagreement: float  # share of items two seeds of one row answer differently
    against_base: bool  # True: row 0 vs the base model; False: row 0 vs row 1
    rows: int = 2  # trained rows in the table (their seed variance is pooled)


def _noise_sd(disagreement: float) -> float:
    """Seed × item noise SD (latent) that makes two seeds disagree on this share of items."""
    from scipy.special import ndtr

    s = math.sqrt(ITEM_SD ** 2 + BASE_ITEM_SD ** 2 + ROW_ITEM_SD ** 2)
    x = np.linspace(-8 * s, 8 * s, 20001)
    weight = np.exp(-0.5 * (x / s) ** 2)
    weight /= weight.sum()

    def share(e):  # P(1[x+e1>0] != 1[x+e2>0]), x ~ N(0, s²)
        p = ndtr(x / e)
        return float((2 * p * (1 - p) * weight).sum())

    lo, hi = 1e-4, 5.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if share(mid) < disagreement else (lo, mid)
    return (lo + hi) / 2


class Simulator:
    def __init__(self, setting: Setting, seed: int = 0):
        from scipy import stats as sps

        self.s = setting
        self.rng = np.random.default_rng(seed)
        self.noise = _noise_sd(setting.disagreement)
        total = math.sqrt(ITEM_SD ** 2 + BASE_ITEM_SD ** 2 + ROW_ITEM_SD ** 2 + self.noise ** 2)
        self.shift = setting.shift_sd / sps.norm.pdf(0, scale=total)  # accuracy moves by pdf(0) per latent unit
        self.total = math.sqrt(total ** 2 + self.shift ** 2)

    def latent(self, effect: float) -> float:
        """Latent shift that moves a row's accuracy from 0.5 by `effect`."""
        from scipy import stats as sps

        return self.total * sps.norm.ppf(0.5 + effect)

    def draw(self, effect: float = 0.0) -> tuple[list[np.ndarray], np.ndarray]:
        """(trained rows, each seeds × items of 0/1; the base model, 1 × items)."""
        s, rng = self.s, self.rng
        items = rng.normal(0, ITEM_SD, s.items) + rng.normal(0, BASE_ITEM_SD, s.items)
        base = (items + rng.normal(0, self.noise, s.items) > 0).astype(float)[None, :]
        rows = []
        for r in range(s.rows):
            z = (items + rng.normal(0, ROW_ITEM_SD, s.items))[None, :] + rng.normal(0, self.shift, (s.seeds, 1))
            z = z + rng.normal(0, self.noise, (s.seeds, s.items)) + (self.latent(effect) if r == 0 else 0.0)
            rows.append((z > 0).astype(float))
        return rows, base


def table_test(rows: list[np.ndarray], base: np.ndarray, against_base: bool) -> stats.Comparison:
    """The table's test of row 0, with the seed variance pooled over every trained row."""
    pool = stats.seed_pool(rows)
    return stats.compare(rows[0], base if against_base else rows[1], b_fixed=against_base, pool=pool)


def seed_mean_t(rows: list[np.ndarray], base: np.ndarray, against_base: bool) -> float:
    """p of the t over seed means: run means of row 0 against the base's mean, or against row 1's run means."""
    from scipy import stats as sps

    a = rows[0].mean(axis=1)
    n = len(a)
    if against_base:
        se, df, diff = a.std(ddof=1) / math.sqrt(n), n - 1, a.mean() - base.mean()
    else:
        b = rows[1].mean(axis=1)
        se, df, diff = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / n), 2 * n - 2, a.mean() - b.mean()
    return float(2 * sps.t.sf(abs(diff) / se, df)) if se > 0 else math.nan


def run_cell(setting: Setting, draws: int, effects=(0.02, 0.05), alpha: float = 0.05, seed: int = 0) -> dict:
    """A/A rates, and power at each effect for the table's test and the seed-mean t, with the power the
    table predicts (stats.power) from the variance components it estimates, averaged over that effect's
    draws (a real effect on binary items adds item-level variance of its own)."""
    sim = Simulator(setting, seed)
    out = {"items": setting.items, "seeds": setting.seeds, "shift_sd": setting.shift_sd,
           "disagreement": setting.disagreement, "against": "base" if setting.against_base else "arm",
           "rows": setting.rows}
    c = 1 / setting.seeds + (0 if setting.against_base else 1 / setting.seeds)
    null_p: dict[str, list[float]] = {}
    for effect in (0.0, *effects):
        ours = theirs = untestable = 0
        p_ours, p_theirs = [], []
        seed_ms, residual, inter, disagree = [], [], [], []
        for _ in range(draws):
            rows, base = sim.draw(effect)
            result = table_test(rows, base, setting.against_base)
            if result.testable:
                ours += result.p < alpha
            else:
                untestable += 1
            p = seed_mean_t(rows, base, setting.against_base)
            theirs += (not math.isnan(p)) and p < alpha
            p_ours.append(result.p if result.testable else 1.0)
            p_theirs.append(1.0 if math.isnan(p) else p)
            pool = stats.seed_pool(rows)
            other = base if setting.against_base else rows[1]
            seed_ms.append(pool.run_ms), residual.append(pool.residual)
            inter.append(float((rows[0].mean(axis=0) - other.mean(axis=0)).var(ddof=1)) - c * pool.residual)
            disagree.append(float(np.mean(rows[0][0] != rows[0][1])))
        key = "aa" if effect == 0.0 else f"power_{effect:g}"
        out[key] = ours / draws
        out[key + "_seed_mean_t"] = theirs / draws
        if effect == 0.0:
            null_p = {"ours": p_ours, "theirs": p_theirs}
        else:  # size-adjusted: each test at the p threshold that gives it exactly alpha under the null
            for name, ps, suffix in (("ours", p_ours, ""), ("theirs", p_theirs, "_seed_mean_t")):
                threshold = float(np.quantile(null_p[name], alpha))
                out[key + suffix + "_size_adjusted"] = float(np.mean(np.asarray(ps) <= threshold))
        if effect == 0.0:
            out["untestable"] = untestable / draws
            out["measured_disagreement"] = float(np.mean(disagree))
        else:
            res = float(np.mean(residual))
            design = stats.Design(max(0.0, float(np.mean(seed_ms)) - res / setting.items), res,
                                  max(0.0, float(np.mean(inter))), setting.seeds,
                                  None if setting.against_base else setting.seeds, setting.items,
                                  setting.rows * (setting.seeds - 1))
            out[key + "_predicted"] = stats.power(design, effect, alpha)
    return out
