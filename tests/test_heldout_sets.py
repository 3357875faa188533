"""eval.heldout=all: every local instruction set's held-out split as its own task, disjoint from any training."""

from __future__ import annotations

import pytest

from sft_lab.config import ConfigError, compose, expand_heldout, heldout_sources, validate
from sft_lab.data import build_mixture, heldout_split, prompt_key

from conftest import DATA_DIR


def test_heldout_all_spells_out_one_task_per_local_set():
    cfg = compose(["eval.heldout=all", "eval.tasks=[arc_easy]"])
    validate(cfg)
    assert list(cfg.eval.tasks) == ["arc_easy"]  # validate changes nothing; the expansion is its own step
    expand_heldout(cfg.eval)
    assert list(cfg.eval.tasks) == ["arc_easy", "heldout_alpaca", "heldout_dolly", "heldout_code_alpaca",
                                    "heldout_lima", "heldout_alpaca_gpt4"]
    expand_heldout(cfg.eval)  # again: nothing doubled
    assert len(cfg.eval.tasks) == 6


def test_heldout_bad_value_names_the_key():
    with pytest.raises(ConfigError, match="heldout_nope"):
        validate(compose(["eval.tasks=[heldout_nope]"]))


@pytest.mark.slow  # builds every shipped mixture
def test_heldout_sets_are_disjoint_from_every_training_mixture():
    """No held-out prompt of any set is trained on, whichever data a run uses (one test set for all runs)."""
    cfg = compose(["data=all_local"])
    held = {name: heldout_split(name, src, cfg.data, str(DATA_DIR)) for name, src in heldout_sources().items()}
    assert all(len(v) > 0 for v in held.values())
    held_keys = {prompt_key(ex.conversation) for v in held.values() for ex in v}
    for preset in ("all_local", "alpaca", "alpaca_gpt4"):
        mixture = build_mixture(compose([f"data={preset}"]).data, str(DATA_DIR), seed=0)
        assert not held_keys & {prompt_key(ex.conversation) for ex in mixture.train}, preset
    # Alpaca and Alpaca-GPT4 share instructions: a shared prompt is held out of both or neither.
    alpaca_prompts = {prompt_key(ex.conversation) for ex in held["alpaca"]}
    gpt4 = build_mixture(compose(["data=alpaca_gpt4"]).data, str(DATA_DIR), seed=0)
    assert not alpaca_prompts & {prompt_key(ex.conversation) for ex in gpt4.train}


def test_a_single_source_runs_own_split_is_its_heldout_set():
    cfg = compose(["data=dolly"])
    own = build_mixture(cfg.data, str(DATA_DIR), seed=3).heldout
    assert [e.conversation for e in own] == [e.conversation for e in heldout_split("dolly", heldout_sources()["dolly"],
                                                                                     cfg.data, str(DATA_DIR))]
