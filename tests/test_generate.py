"""Greedy generation: the continuous batch gives lm-eval hf's answers, stops where it stops, and says so."""

from __future__ import annotations

import pytest
from conftest import compose

from sft_lab.generate import EvalLM, Generator, cut


@pytest.fixture(scope="module")
def tiny(tokenizer):
    from sft_lab.models import load_model

    cfg = compose(["model=tiny"])
    return load_model(cfg.model, tokenizer, cfg.paths.cache_dir, 0).eval()


PROMPTS = ["Name three colours.", "Write a haiku about rain, in English, with no commas at all please.",
           "2+2=", "Translate 'cat' into French.", "List the planets of the solar system in order from the sun.",
           "Hi", "Explain gravity to a child in two sentences.", "What is the capital of Peru?"]


def requests(until, max_gen_toks=12):
    from lm_eval.api.instance import Instance

    return [Instance("generate_until", doc={}, arguments=(p, {"until": list(until), "max_gen_toks": max_gen_toks,
                                                             "do_sample": False}), idx=i) for i, p in enumerate(PROMPTS)]


@pytest.mark.slow  # runs lm-eval's own generation three times: the quick tier runs no lm-eval
def test_continuous_batch_answers_as_lm_eval_hf_does(tiny, tokenizer):
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=tiny, tokenizer=tokenizer, batch_size=3).generate_until(requests([]), disable_tqdm=True)
    # a stop string that one answer meets early: answers are cut there, as lm-eval cuts them
    stop = tokenizer.decode(tokenizer(hf[0], add_special_tokens=False).input_ids[3:4])
    hf_stop = HFLM(pretrained=tiny, tokenizer=tokenizer, batch_size=3).generate_until(requests([stop]), disable_tqdm=True)
    assert hf_stop != hf and hf_stop[0] != hf[0]
    for rows in (1, 3, 8):  # rows < prompts: answers leave the batch and waiting prompts take their place
        lm = EvalLM(pretrained=tiny, tokenizer=tokenizer, batch_size=3)
        lm.gen_batch_size = rows
        assert lm.generate_until(requests([]), disable_tqdm=True) == hf
        assert lm.generate_until(requests([stop]), disable_tqdm=True) == hf_stop
        stopped = [lm.answers[p].stopped for p in PROMPTS]
        assert stopped[0] and not all(stopped)  # the stop string ended the first; the limit ended others
        assert all(lm.answers[p].tokens == 12 for p, s in zip(PROMPTS, stopped) if not s)


def test_generator_stops_at_eos_and_counts_tokens(tiny, tokenizer):
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS[:3]]
    free = Generator(tiny, tokenizer, batch_size=2).generate(ids, [[]] * 3, [6] * 3, progress=False)
    assert all(a.tokens == 6 and not a.stopped for a in free)
    # make the model's second greedy token the end of sequence: the answer ends there, without it
    first = tokenizer(free[0].text, add_special_tokens=False).input_ids
    tokenizer_eos = tokenizer.eos_token_id
    try:
        tokenizer.eos_token_id = first[1]
        cut_short = Generator(tiny, tokenizer, batch_size=2).generate(ids[:1], [[]], [6], progress=False)[0]
    finally:
        tokenizer.eos_token_id = tokenizer_eos
    assert cut_short.stopped and cut_short.tokens == 2


def test_cut_is_lm_evals_rule():
    assert cut("a<|im_end|>b### c", ["<|im_end|>", "###"]) == "a"
    assert cut("no stop here", ["", "###"]) == "no stop here"


def test_gen_batch_size_null_takes_the_rows_whose_cache_fits_in_half_the_free_memory(tiny, tokenizer):
    from sft_lab.generate import CPU_ROWS, MAX_ROWS, auto_rows, kv_bytes_per_token

    c = tiny.config
    per_token = kv_bytes_per_token(c, next(tiny.parameters()).dtype)
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    assert per_token == 2 * c.num_hidden_layers * heads * (c.hidden_size // c.num_attention_heads) * 4  # fp32
    prompts, limits = [[1] * 10, [1] * 30], [20, 20]  # the longest prompt plus its limit: 50 tokens a row
    assert auto_rows(tiny, prompts * 100, limits * 100, free_bytes=2 * 50 * per_token * 7 + 1) == 7
    assert auto_rows(tiny, prompts, limits, free_bytes=10 ** 15) == 2  # never more rows than prompts
    assert auto_rows(tiny, prompts * 1000, limits * 1000, free_bytes=10 ** 15) == MAX_ROWS
    assert auto_rows(tiny, prompts * 100, limits * 100, free_bytes=1) == 1
    assert auto_rows(tiny, prompts * 100, limits * 100) == CPU_ROWS  # on a CPU: the measured default
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
    fixed = Generator(tiny, tokenizer, batch_size=CPU_ROWS).generate(ids, [[]] * 8, [5] * 8, progress=False)
    assert Generator(tiny, tokenizer, batch_size=None).generate(ids, [[]] * 8, [5] * 8, progress=False) == fixed
