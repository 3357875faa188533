"""The table statistics on synthetic data with known answers."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from sft_lab.analysis.stats import holm, paired_bootstrap, t_interval


def test_t_interval_matches_the_textbook():
    mean, half, n = t_interval([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4)
    assert half == pytest.approx(sps.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2)  # 2.054
    assert t_interval([0.7]) == (0.7, None, 1)


def test_bootstrap_identical_pair_is_one_and_large_shift_is_zero():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 300).astype(float)
    assert paired_bootstrap(a, a) == pytest.approx(1.0)
    b = np.where(rng.random(300) < 0.9, 1.0, 0.0)  # 90% vs about 50%
    a = np.where(rng.random(300) < 0.5, 1.0, 0.0)
    assert paired_bootstrap(a, b) < 0.001


def test_holm_order_and_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 (x4=0.02), 0.01 (x3=0.03), 0.03 (x2=0.06), 0.04 (x1=0.04 -> monotone 0.06)
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm([0.01, math.nan])[1]) and holm([0.01, math.nan])[0] == pytest.approx(0.01)


def test_aa_identical_configs_are_flagged_at_about_the_nominal_rate():
    """Two seeds of the same config: items differ by seed noise only, so p < 0.05 about 5% of the time."""
    rng = np.random.default_rng(1)
    flagged, draws = 0, 300
    difficulty = rng.random(200)  # per-item chance of being right, shared by both runs
    for i in range(draws):
        a = (rng.random(200) < difficulty).astype(float)
        b = (rng.random(200) < difficulty).astype(float)
        flagged += paired_bootstrap(a, b, iters=2000, seed=i) < 0.05
    assert flagged / draws <= 0.08, flagged / draws
