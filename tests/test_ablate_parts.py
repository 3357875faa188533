"""The parts of a tuned ablation that need no training: budgets, dev/test splits, tuning curves, the file's checks."""

import itertools
import textwrap

import numpy as np
import pandas as pd
import pytest

from sft_lab.ablate.spec import AblateError, load_spec
from sft_lab.analysis import curves as cv
from sft_lab.analysis import table as tbl
from sft_lab.config import ConfigError, compose, validate
from sft_lab.evaluate.split import SplitError, restrict, side
from sft_lab.trainer import TokenBudget


def test_expected_best_matches_enumerating_every_draw():
    values = [0.31, 0.52, 0.40, 0.47, 0.35]
    got = cv.expected_best(values)
    for t in (1, 2, 3):
        draws = list(itertools.product(values, repeat=t))  # trials drawn with replacement, each equally likely
        assert got[t - 1] == pytest.approx(np.mean([max(d) for d in draws]))
    low = cv.expected_best(values, higher_is_better=False)
    assert low[1] == pytest.approx(np.mean([min(d) for d in itertools.product(values, repeat=2)]))
    assert got == sorted(got) and got[-1] < max(values)  # rises with the budget, below the best trial


def test_ranking_sentence_says_when_the_budget_changes_the_ranking():
    # a: steady, mediocre trials; b: one great trial among poor ones
    curves = cv.tuning_curves({"a": [0.50, 0.51, 0.52, 0.50], "b": [0.30, 0.31, 0.30, 0.70]}, True)
    by_budget = cv.ranking_by_budget(curves, True)
    assert by_budget[0][1] == ["a", "b"] and by_budget[-1][1] == ["b", "a"]
    assert "changes with the tuning budget" in cv.ranking_sentence(curves, True)
    same = cv.tuning_curves({"a": [0.5, 0.6, 0.7], "b": [0.1, 0.2, 0.3]}, True)
    assert "the same at every budget" in cv.ranking_sentence(same, True)


def test_too_few_trials_give_no_curve_and_say_so():
    curves = cv.tuning_curves({"a": [0.5, 0.6], "b": [0.1, 0.2, 0.3]}, True)
    assert curves[0].curve is None and curves[1].curve is not None
    text = cv.ranking_sentence(curves, True)
    assert "a (2 finished trials)" in text and f"at least {cv.MIN_TRIALS}" in text


def test_split_is_stable_disjoint_and_near_its_fraction():
    docs = [{"question": f"q{i}", "answer": i} for i in range(2000)]
    sides = [side(d, 0.5) for d in docs]
    assert sides == [side(dict(reversed(list(d.items()))), 0.5) for d in docs]  # content, not key order
    assert 0.45 < sides.count("dev") / len(docs) < 0.55
    assert 0.15 < [side(d, 0.2) for d in docs].count("dev") / len(docs) < 0.25


class _Task:
    def __init__(self, n):
        import datasets

        self.config = type("C", (), {"test_split": "test", "validation_split": None})()
        self.dataset = datasets.DatasetDict({"test": datasets.Dataset.from_list([{"q": f"item {i}"} for i in range(n)])})


def test_restrict_keeps_one_side_and_refuses_a_split_too_small_for_the_test():
    dev, test = _Task(200), _Task(200)
    n_dev, n_test = restrict(dev, "t", "dev", 0.5), restrict(test, "t", "test", 0.5)
    assert n_dev + n_test == 200
    assert not set(dev.dataset["test"]["q"]) & set(test.dataset["test"]["q"])
    with pytest.raises(SplitError, match=r"task 'small' keeps \d+ of its 12 items"):
        restrict(_Task(12), "small", "dev", 0.5)


def test_token_budget_steps_and_epochs():
    b = TokenBudget(max_tokens=10_000, per_epoch=4_000, steps_per_epoch=100)
    assert b.expected_steps == 250 and b.epochs == 4  # 2.5 passes, and room past the last edge


@pytest.mark.parametrize("overrides, message", [
    (["train.max_tokens=1000"], "set exactly one of train.max_steps, train.epochs and train.max_tokens"),
    (["train.max_steps=null", "train.epochs=1", "train.max_tokens=1000"], "train.epochs=1.0, train.max_tokens=1000"),
    (["train.max_steps=null", "train.max_tokens=0"], "train.max_tokens must be > 0"),
    (["eval.dev_fraction=1.0"], "eval.dev_fraction must be in"),
    (["eval.every=10", "eval.every_tokens=500"], "set one of eval.every .steps. and eval.every_tokens"),
    (["eval.every=10", "eval.every_tasks=[toy_first]"], r"eval.every_tasks: \['toy_first'\] not in eval.tasks"),
    (["eval.every=-1"], "eval.every and eval.every_tokens must be >= 0"),
])
def test_budget_and_split_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))


def test_a_token_budget_composes():
    validate(compose(["train.max_steps=null", "train.max_tokens=5000", "eval.split=test"]))


ABLATION = """
study_name: t
arms: {lora.r: [4, 64]}
tune: {lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
tuning_seeds: [0]
seeds: [1, 2]
objective: {metrics: [toy_first.acc], direction: maximize}
"""


@pytest.mark.parametrize("change, message", [
    ("tune: {lora.r: {type: categorical, choices: [8]}}", "lora.r is both an arm factor and a tune key"),
    ("seeds: [0, 1]", r"final seed\(s\) \[0\] are also tuning seeds"),
    ("objective: {metrics: [heldout.loss]}", "heldout.loss reads the held-out examples"),
    ("arms: {lora.r: [4]}", "arms gives one arm"),
    ("trials: 0", "trials must be at least 1"),
    ("bogus: 1", "bogus"),
    ("curve: {every_tokens: 500, tasks: [piqa]}\nfinal: [toy_first]", r"curve.tasks \['piqa'\] are not among the final"),
    ("curve: {every_tokens: -5}", "curve.every_tokens must be >= 0"),
])
def test_ablation_file_mistakes_get_one_clear_error(tmp_path, change, message):
    key = change.split(":")[0]
    text = "\n".join(line for line in ABLATION.splitlines() if not line.startswith(key + ":")) + "\n" + change
    path = tmp_path / "a.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(AblateError, match=message):
        load_spec(str(path))


def test_the_shipped_ablations_load_and_every_arm_composes():
    from sft_lab.ablate.spec import arm_overrides, arm_sweep
    from sft_lab.sweep.spec import check

    study = load_spec("sweeps/ablate_study.yaml")
    assert set(study.seeds).isdisjoint(study.tuning_seeds) and len(arm_overrides(study)) == 3
    spec = load_spec("sweeps/ablate_toy.yaml")
    for label, overrides in arm_overrides(spec):
        check(arm_sweep(spec, label, overrides), [])  # each value composes; the objective is evaluated


def test_a_table_refuses_runs_reported_on_the_items_they_were_tuned_on():
    runs = pd.DataFrame({"lora.r": [4, 64], "seed": [1, 1], "baseline": [False, False], "run_dir": ["", ""],
                         "eval/toy_first/acc": [0.5, 0.6], "eval.split": ["dev", "dev"], "tuned_on": ["dev", "dev"],
                         "name": ["a", "b"], "protocol": ["{}", "{}"], "train.tokens_seen": [1e3, 1e3],
                         "train.wall_s": [1.0, 1.0]})
    with pytest.raises(tbl.TableError, match="report the items their configuration was tuned on"):
        tbl.build(runs, ["lora.r"])
    runs["eval.split"] = "test"
    assert "Items: the test split" in " ".join(tbl.build(runs, ["lora.r"]).legend)


def test_the_learning_curve_is_due_every_k_steps_or_each_time_the_tokens_pass_a_multiple():
    from sft_lab.trainer import Probe

    by_steps = Probe(lambda m: {}, steps=10)
    assert [s for s in range(1, 31) if by_steps.due(s, 0, None)] == [10, 20, 30]
    by_tokens = Probe(lambda m: {}, tokens=1000)
    points, last = [], None
    for step, seen in enumerate([400, 900, 1300, 1700, 2600, 3100, 3200], start=1):
        if by_tokens.due(step, seen, last):
            last = {"answer_tokens": seen}
            points.append(seen)
    assert points == [1300, 2600, 3100]  # one point per multiple passed, even when a step passes two


def test_measuring_mid_training_leaves_every_random_stream_as_it_was():
    import random

    import torch

    from sft_lab.trainer import kept_rng

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with kept_rng():
        random.random(), np.random.rand(3), torch.rand(5), torch.manual_seed(1234)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_curve_keys_leave_old_fingerprints_alone_and_a_base_run_ignores_them():
    from sft_lab.record import fingerprint

    plain = compose(["model=tiny"])
    from sft_lab.config import to_container

    fp = fingerprint(to_container(plain))
    assert fingerprint(to_container(compose(["model=tiny", "eval.every=0", "eval.every_limit=50"]))) == fp
    assert fingerprint(to_container(compose(["model=tiny", "eval.every=10"]))) != fp
    base = lambda *o: fingerprint(to_container(compose(["model=tiny", "baseline=true", *o])))  # noqa: E731
    assert base("eval.every=10") == base()


def test_learning_curves_read_items_and_held_out_loss_per_metric():
    runs = [[{"step": 5, "answer_tokens": 100, "heldout/loss": 2.0, "arc_easy/acc": 0.40},
             {"step": 10, "answer_tokens": 210, "heldout/loss": 1.5, "arc_easy/acc": 0.50}],
            [{"step": 5, "answer_tokens": 110, "heldout/loss": 2.2, "arc_easy/acc": 0.44},
             {"step": 10, "answer_tokens": 200, "heldout/loss": 1.7, "arc_easy/acc": 0.52}]]
    assert cv.curve_metrics(runs) == ["heldout/loss", "arc_easy/acc"]
    acc = cv.learning_curve("a", runs, "arc_easy/acc")
    assert acc.metric == "arc_easy/acc" and acc.seeds == 2
    assert acc.tokens == [105, 205] and acc.mean == pytest.approx([0.42, 0.51])
    # an older record: the held-out loss every train.eval_steps
    old = cv.run_curve({"heldout_curve": [{"step": 10, "answer_tokens": 50, "loss": 3.0}]})
    assert old == [{"step": 10, "answer_tokens": 50, "heldout/loss": 3.0}]


def test_answer_tokens_trained_are_an_outcome_not_a_factor_the_table_pools_over():
    # seeds draw other examples, so each run trains on its own number of answer tokens
    df = pd.DataFrame({"data": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "lr": [1e-4] * 4,
                       "train.answer_tokens": [10_400, 10_900, 11_800, 11_100]})
    assert tbl.pooled_factors(df, ["data"], "seed") == []
    df["lr"] = [1e-4, 2e-4, 1e-4, 2e-4]
    assert tbl.pooled_factors(df, ["data"], "seed") == ["lr"]


def test_a_switch_or_key_added_after_older_runs_is_not_a_factor_between_them():
    # runs recorded before train.liger / train.max_tokens existed, beside runs that record their defaults
    from sft_lab.analysis.collect import record_row
    from sft_lab.record import RunRecord

    def row(data, seed, train):
        config = {"data": {"name": data}, "seed": seed, "lr": 2e-4, "train": {"max_steps": 30, **train}}
        return record_row(RunRecord("finished", f"{data}{seed}", "x", config), "x")

    new = {"liger": False, "torch_compile": False, "padding_free": True, "max_tokens": None}
    df = pd.DataFrame([row("a", 0, {}), row("a", 1, new), row("b", 0, {}), row("b", 1, new)])
    assert tbl.pooled_factors(df, ["data"], "seed") == []
    df = pd.DataFrame([row("a", 0, {}), row("a", 1, {**new, "liger": True}), row("b", 0, {}), row("b", 1, new)])
    assert tbl.pooled_factors(df, ["data"], "seed") == ["train.liger"]  # set otherwise: a factor again
