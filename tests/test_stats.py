"""The table statistics on simulated runs with known answers: seeds × items, seed shifts included."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from sft_lab.analysis.simulation import Setting, Simulator, table_test
from sft_lab.analysis.stats import (
    Design,
    compare,
    components,
    detectable_effect,
    holm,
    interval,
    paired_bootstrap,
    pooled,
    power,
    pseudo_values,
    seed_pool,
    t_interval,
)


def simulate(rng, n_seeds, difficulty, seed_sd, effect=0.0):
    """runs × items of 0/1: each run's logit is shifted by its seed (the correlated shift real runs have)."""
    logit = np.log(difficulty / (1 - difficulty))
    shift = rng.normal(0, seed_sd, size=(n_seeds, 1)) + effect
    p = 1 / (1 + np.exp(-(logit[None, :] + shift)))
    return (rng.random((n_seeds, len(difficulty))) < p).astype(float)


def test_t_interval_matches_the_textbook():
    mean, half, n = t_interval([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4)
    assert half == pytest.approx(sps.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert t_interval([0.7]) == (0.7, None, 1)


def test_components_recover_known_variances():
    rng = np.random.default_rng(0)
    n, k = 40, 400
    y = rng.normal(0, 0.3, (n, 1)) + rng.normal(0, 1.0, (1, k)) + rng.normal(0, 0.5, (n, k))
    c = components(y)
    assert c.seed == pytest.approx(0.09, rel=0.5)
    assert c.item == pytest.approx(1.0, rel=0.2)
    assert c.residual == pytest.approx(0.25, rel=0.05)


def test_pooled_components_recover_seed_noise_and_arm_by_item_interaction():
    rng = np.random.default_rng(1)
    n, k = 20, 400
    items = rng.normal(0, 1.0, (1, k))
    arms = [items + rng.normal(0, 0.2, (1, k)) + rng.normal(0, 0.3, (n, 1)) + rng.normal(0, 0.5, (n, k))
            for _ in range(3)]
    keys = list(range(k))
    p = pooled([(keys, a) for a in arms])
    assert p.seed == pytest.approx(0.09, rel=0.5)
    assert p.residual == pytest.approx(0.25, rel=0.05)
    # two arms' item effects differ by N(0, 0.2²) each: Var(difference) = 2 × 0.04
    assert p.interaction == pytest.approx(0.08, rel=0.3)
    assert pooled([(keys, a[:1]) for a in arms]) is None  # one run per arm: nothing to pool


def test_pooled_pairs_arms_on_item_keys_not_on_item_counts():
    """Two configs with different held-out sets of equal size: nothing to pair, so no interaction is made up."""
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, (1, 50)) + rng.normal(0, 0.3, (3, 50))  # each set its own item effects
    b = rng.normal(0, 1, (1, 50)) + rng.normal(0, 0.3, (3, 50))
    assert pooled([(list(range(50)), a), (list(range(100, 150)), b)]).interaction == 0.0
    # the same items in another order pair up item by item
    shuffled = rng.permutation(50)
    same = pooled([(list(range(50)), a), (list(shuffled), a[:, shuffled])])
    assert same.interaction == 0.0 and same.n_items == 50
    assert pooled([(list(range(50)), a), (list(range(50)), b)]).interaction > 0.5


def test_interval_covers_the_true_mean_over_new_seeds_and_items():
    """95% CIs from 4 seeds x 150 items cover the population mean about 95% of the time."""
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(1500):
        y = 0.5 + rng.normal(0, 0.03, (4, 1)) + rng.normal(0, 0.2, (1, 150)) + rng.normal(0, 0.3, (4, 150))
        est = interval(y)
        covered += abs(est.mean - 0.5) <= est.half
    assert 0.93 <= covered / 1500 <= 0.97


def test_one_run_interval_says_it_covers_items_only():
    y = np.random.default_rng(2).random((1, 50))
    est = interval(y)
    assert not est.seeds_measured and est.half > 0
    assert compare(y, y) is None  # no test without seed variance


def test_aa_with_seed_shifts_new_test_holds_its_level_and_item_only_test_does_not():
    """Seeds shift every item together: the item-only bootstrap flags far too often, the new test ~5%."""
    rng = np.random.default_rng(3)
    difficulty = rng.uniform(0.1, 0.9, 300)
    new = old = 0
    draws = 200
    for i in range(draws):
        a, b = simulate(rng, 4, difficulty, 0.3), simulate(rng, 4, difficulty, 0.3)
        new += compare(a, b).p < 0.05
        old += paired_bootstrap(a.mean(axis=0), b.mean(axis=0), iters=1000, seed=i) < 0.05
    assert new / draws <= 0.08, new / draws
    assert old / draws >= 0.2, old / draws


def test_real_effect_is_found():
    rng = np.random.default_rng(4)
    difficulty = rng.uniform(0.1, 0.9, 300)
    found = sum(compare(simulate(rng, 4, difficulty, 0.1, effect=0.5), simulate(rng, 4, difficulty, 0.1)).p < 0.05
                for _ in range(50))
    assert found >= 45


def test_pseudo_values_mean_is_the_ratio():
    rng = np.random.default_rng(5)
    bits, nbytes = rng.random((3, 20)) * 10, rng.integers(5, 50, (3, 20)).astype(float)
    y = pseudo_values(bits, nbytes)
    assert y.mean(axis=1) == pytest.approx(bits.sum(axis=1) / nbytes.sum(axis=1))


def test_ratio_pseudo_values_give_the_ratios_variance_with_heavy_tailed_lengths():
    """60 answers with lognormal lengths: the variance of the mean of the pseudo-values is within 3% of the
    Monte Carlo variance of the bits/bytes ratio (the delta method ran ~11% low here)."""
    rng = np.random.default_rng(7)
    ratios, estimates = [], []
    for _ in range(6000):
        nbytes = np.ceil(rng.lognormal(4.0, 1.2, 60))
        bits = nbytes * rng.gamma(4.0, 0.25, 60) + rng.normal(0, 3, 60) * np.sqrt(nbytes)
        ratios.append(bits.sum() / nbytes.sum())
        y = pseudo_values(bits[None, :], nbytes[None, :])[0]
        estimates.append(y.var(ddof=1) / len(y))
    assert np.mean(estimates) == pytest.approx(np.var(ratios), rel=0.03)


def test_predicted_power_matches_the_simulated_test():
    """stats.power is the power of compare() itself: seeds pooled over two rows, against the base."""
    rng = np.random.default_rng(6)
    k, n, seed_sd, noise = 200, 3, 0.02, math.sqrt(0.2)
    design = Design(seed=seed_sd ** 2, residual=0.2, interaction=0.0, n_a=n, n_b=None, items=k, run_df=2 * (n - 1))
    effect = detectable_effect(design)
    hits = 0
    for _ in range(600):
        base = 0.5 + rng.normal(0, 0.3, (1, k))
        rows = [base + e + rng.normal(0, seed_sd, (n, 1)) + rng.normal(0, noise, (n, k)) for e in (effect, 0.0)]
        hits += compare(rows[0], base, b_fixed=True, pool=seed_pool(rows)).p < 0.05
    assert hits / 600 == pytest.approx(0.8, abs=0.05)
    assert power(design, effect) == pytest.approx(0.8, abs=1e-6)
    # Holm at the table's family size needs a larger effect; one seed claims nothing
    assert detectable_effect(Design(seed_sd ** 2, 0.2, 0.0, n, None, k, 2 * (n - 1), family=20)) > effect
    assert math.isnan(detectable_effect(Design(seed_sd ** 2, 0.2, 0.0, 1, None, k, 0)))


def test_against_base_holds_its_level_where_the_plug_in_df_did_not():
    """The audit's worst cell: 2 seeds, 1,000 items, seed shift SD 0.02, one row against the base. With the
    plain plug-in Satterthwaite df the same variance rejects ~12% of true nulls; the table's df hold 5%."""
    from scipy import stats as sps

    from sft_lab.analysis import stats

    sim = Simulator(Setting(items=1000, seeds=2, shift_sd=0.02, disagreement=0.05, against_base=True, rows=1), seed=0)
    ours = plug_in = 0
    draws = 400
    for _ in range(draws):
        rows, base = sim.draw()
        result = table_test(rows, base, against_base=True)
        if not result.testable:  # the two seeds scored the same: no test, no claim
            continue
        ours += result.p < 0.05
        pool = stats.seed_pool(rows)
        ms_d = float((rows[0].mean(axis=0) - base[0]).var(ddof=1))
        df = stats.satterthwaite(stats._difference_terms(pool, 0.5, ms_d, 1000))
        plug_in += 2 * sps.t.sf(abs(result.diff) / result.se, df) < 0.05
    assert ours / draws <= 0.06 and plug_in / draws >= 0.08, (ours / draws, plug_in / draws)


def test_holm_order_and_values():
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm([0.01, math.nan])[1]) and holm([0.01, math.nan])[0] == pytest.approx(0.01)


def test_against_the_fixed_base_model_holds_its_level_and_finds_a_shift():
    """The base model has no seeds: its one run is exact. Trained arms vary by seed and by item × arm."""
    rng = np.random.default_rng(5)
    k, draws = 200, 400

    def trained(base, effect):
        return (base + rng.normal(0, 0.2, (1, k)) + rng.normal(0, 0.3, (3, 1)) + rng.normal(0, 0.5, (3, k))
                + effect)

    false = found = 0
    for _ in range(draws):
        base = rng.normal(0, 1.0, (1, k))
        false += compare(trained(base, 0.0), base, b_fixed=True).p < 0.05
        found += compare(trained(base, 1.5), base, b_fixed=True).p < 0.05
    assert 0.02 <= false / draws <= 0.08, false / draws
    assert found / draws >= 0.8, found / draws
    assert compare(trained(base, 0.0)[:1], base, b_fixed=True) is None  # one seed: its variance unknown


def test_two_seeds_with_equal_means_do_not_make_a_one_item_change_significant():
    """Seen in the study: both seeds scored 21/60, each flipping a different item against the base model."""
    base = np.zeros((1, 60))
    base[0, :22] = 1
    a = np.repeat(base, 2, axis=0)
    a[0, 0] = 0
    a[1, 1] = 0  # each seed loses one (different) item: run means are equal, so their spread is 0
    result = compare(a, base, b_fixed=True)
    assert not result.testable and math.isnan(result.p)  # seed variance 0: nothing to test against


def test_zero_seed_variance_is_not_testable_and_pooling_makes_it_testable():
    """Every seed gave identical answers: no p = 0, no † from nothing. Another row's seeds give the pool."""
    base = np.zeros((1, 60))
    base[0, :22] = 1
    same = np.repeat(np.roll(base, 5, axis=1), 3, axis=0)
    assert not compare(same, base, b_fixed=True).testable
    other = (np.random.default_rng(0).random((3, 60)) < 0.4).astype(float)
    pooled_result = compare(same, base, b_fixed=True, pool=seed_pool([same, other]))
    assert pooled_result.testable and 0 < pooled_result.p <= 1
