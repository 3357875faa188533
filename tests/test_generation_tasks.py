"""Generative tasks: prompts as trained, where answers stop, IFEval's checkers offline, clear errors."""

from __future__ import annotations

import json

import pytest
from conftest import compose

from sft_lab.config import ConfigError, validate
from sft_lab.errors import UserError


def test_generation_prompt_is_the_trained_prompt_and_stops_at_end_of_turn(tokenizer):
    from sft_lab.templates import generation_prompt, generation_stops, render_prompt

    for name, marker in (("alpaca", tokenizer.eos_token), ("chatml", "<|im_end|>"), ("plain", tokenizer.eos_token)):
        template = compose([f"template={name}"]).template
        conv = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
        assert generation_prompt("Say hi.", template, tokenizer) == render_prompt(conv, template, tokenizer)[0]
        assert generation_stops(template, tokenizer).until == [marker]
    alpaca = compose(["template=alpaca"]).template
    assert generation_prompt("Say hi.", alpaca, tokenizer).endswith("### Response:")


def test_a_template_without_end_of_turn_says_it_stops_at_eos(tokenizer):
    from sft_lab.templates import generation_stops

    template = compose(["template=plain"]).template
    template.assistant_suffix = "\n\n"
    stops = generation_stops(template, tokenizer)
    assert stops.until == [] and "no end-of-turn marker" in stops.note and tokenizer.eos_token in stops.note


def test_ifeval_scores_with_lm_evals_checkers_offline(data_dir):
    from sft_lab.ifeval import load_docs, score

    docs = load_docs(str(data_dir))
    assert len(docs) == 541
    doc = {"key": 0, "prompt": "Say hello without commas.", "instruction_id_list": ["punctuation:no_comma"],
           "kwargs": [{}]}
    assert score([doc], ["hello there friend"])["prompt_level_strict_acc"] == 1.0
    assert score([doc], ["hello, there"])["prompt_level_strict_acc"] == 0.0
    sentences = {"key": 1, "prompt": "x", "instruction_id_list": ["length_constraints:number_sentences"],
                 "kwargs": [{"relation": "less than", "num_sentences": 2}]}  # needs NLTK's punkt_tab
    assert score([sentences], ["One sentence only."])["inst_level_strict_acc"] == 1.0
    assert score([sentences], ["One. Two. Three."])["inst_level_strict_acc"] == 0.0


def test_missing_ifeval_file_and_missing_punkt_are_one_clear_error(tmp_path, monkeypatch):
    from sft_lab import punkt
    from sft_lab.ifeval import load_docs

    with pytest.raises(UserError, match=r"ifeval_input_data.jsonl, which does not exist.*paths.data_dir"):
        load_docs(str(tmp_path))
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(punkt.PunktMissing, match="python -m sft_lab.punkt"):
        punkt.require()
    punkt.install(tmp_path)  # what the set-up step writes, here into tmp_path
    punkt.require()
    assert sorted(p.name for p in (tmp_path / "tokenizers" / "punkt_tab" / "english").iterdir()) == [
        "abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"]


@pytest.mark.slow  # builds lm-eval's task index: the quick tier runs no lm-eval
def test_bad_generation_settings_name_the_key():
    with pytest.raises(ConfigError, match="eval.max_gen_toks must be > 0"):
        validate(compose(["eval.max_gen_toks=0"]))
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['gen_nope'\].*gen_alpaca"):
        validate(compose(["eval.tasks=[gen_nope]"]))
    validate(compose(["eval.tasks=[ifeval,gen,gen_dolly]"]))


def test_generative_items_load_as_numbers_and_ratios(tmp_path):
    from sft_lab.analysis.collect import load_items

    (tmp_path / "samples").mkdir()
    rows = [{"doc_id": 0, "doc_hash": "a", "prompt_hash": "p0", "prompt_level_strict_acc": True,
             "inst_level_strict_acc": [True, False, True], "stopped": 1, "rougeL": 0.25},
            {"doc_id": 1, "doc_hash": "b", "prompt_hash": "p1", "prompt_level_strict_acc": False,
             "inst_level_strict_acc": [False], "stopped": 0, "rougeL": 0.5}]
    (tmp_path / "samples" / "ifeval.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert list(load_items(str(tmp_path), "ifeval", "prompt_level_strict_acc").values()) == [1.0, 0.0]
    assert list(load_items(str(tmp_path), "ifeval", "inst_level_strict_acc").values()) == [(2.0, 3.0), (0.0, 1.0)]
    assert list(load_items(str(tmp_path), "ifeval", "stopped").values()) == [1.0, 0.0]


def test_pooled_ratio_pseudo_values_reproduce_lm_evals_instruction_level_mean():
    import numpy as np

    from sft_lab.analysis.stats import pseudo_values

    followed, given = np.array([[2.0, 0.0, 1.0]]), np.array([[3.0, 1.0, 1.0]])
    assert pseudo_values(followed, given).mean() == pytest.approx(3 / 5)  # 3 of 5 instructions, not mean of 2/3, 0, 1
