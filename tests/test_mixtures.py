"""Formats, mixtures, held-out splits, fingerprints and the token cache, on real data and small files."""

import json
import shutil

import pytest
from conftest import compose

from sft_lab.config import ConfigError, validate
from sft_lab.data import DataError, build_mixture, prompt_key
from sft_lab.tokens import data_key, tokenise_mixture

FORMATS = {
    "alpaca": ({"instruction": "Add 2 and 3.", "input": "Show the sum.", "output": "5"},
               [{"role": "user", "content": "Add 2 and 3.", "input": "Show the sum."}, {"role": "assistant", "content": "5"}]),
    "alpaca_history": ({"instruction": "And 3+3?", "input": "", "output": "6", "history": [["1+1?", "2"]]},
                       [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]),
    "dolly": ({"instruction": "Who wrote it?", "context": "Hamlet is a play.", "response": "Shakespeare", "category": "qa"},
              [{"role": "user", "content": "Who wrote it?", "input": "Hamlet is a play."},
               {"role": "assistant", "content": "Shakespeare"}]),
    "sharegpt": ({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                    {"from": "gpt", "value": "Hello"}]},
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello"}]),
    "messages": ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
                 [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def file_data(path, fmt="auto", extra=()):
    return compose(["data=file", f"data.path={path}", f"data.format={fmt}", "data.heldout_fraction=0", *extra]).data


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_normalises_to_one_conversation_form(name, tmp_path):
    record, expected = FORMATS[name]
    path = write_jsonl(tmp_path / f"{name}.jsonl", [record])
    fmt = "alpaca" if name == "alpaca_history" else name
    for given in ("auto", fmt):  # detected, and named explicitly
        mix = build_mixture(file_data(path, given), str(tmp_path), 0)
        assert [ex.conversation for ex in mix.train] == [expected]
        assert mix.sources[name]["format"] == fmt


def test_lima_multi_turn_history_from_the_shared_file(data_dir):
    mix = build_mixture(compose(["data=lima"]).data, str(data_dir), 0)
    multi = [ex for ex in mix.train + mix.heldout if len(ex.conversation) > 2]
    assert 20 <= len(multi) <= 29  # 29 multi-turn records in lima.json, a few may be held out
    assert all(m["role"] == ("user", "assistant")[i % 2] for ex in multi for i, m in enumerate(ex.conversation))


def test_weights_give_shares_within_rounding(data_dir):
    data = compose(["data=alpaca_dolly", "data.examples=1001", "data.sources.dolly.weight=0.25",
                    "data.sources.alpaca.weight=0.75"]).data
    mix = build_mixture(data, str(data_dir), 0)
    counts = {n: sum(ex.source == n for ex in mix.train) for n in ("alpaca", "dolly")}
    assert sum(counts.values()) == 1001
    assert abs(counts["dolly"] - 0.25 * 1001) <= 1 and abs(counts["alpaca"] - 0.75 * 1001) <= 1


def test_equal_weights_default_size_is_the_largest_without_upsampling(data_dir):
    mix = build_mixture(compose(["data=alpaca_dolly"]).data, str(data_dir), 0)
    dolly_available = mix.sources["dolly"]["available"]
    assert mix.sources["dolly"]["drawn"] == dolly_available == mix.sources["alpaca"]["drawn"]
    assert not mix.sources["dolly"]["upsampled"] and not mix.sources["alpaca"]["upsampled"]


def test_counts_are_exact_and_upsampling_is_stated(data_dir):
    data = compose(["data=alpaca_dolly", "data.sources.alpaca.weight=null", "data.sources.dolly.weight=null",
                    "++data.sources.alpaca.examples=300", "++data.sources.dolly.examples=5000"]).data
    mix = build_mixture(data, str(data_dir), 0)
    assert sum(ex.source == "alpaca" for ex in mix.train) == 300
    assert sum(ex.source == "dolly" for ex in mix.train) == 5000
    assert mix.sources["dolly"]["upsampled"] and mix.sources["dolly"]["upsample_factor"] > 1
    assert not mix.sources["alpaca"]["upsampled"]


@pytest.mark.slow  # builds full mixtures four times
def test_mixture_is_seeded_and_reproducible(data_dir):
    data = compose(["data=alpaca_dolly", "data.examples=200"]).data
    a, b = build_mixture(data, str(data_dir), 7), build_mixture(data, str(data_dir), 7)
    c = build_mixture(data, str(data_dir), 8)
    assert [e.where for e in a.train] == [e.where for e in b.train] != [e.where for e in c.train]


@pytest.mark.slow  # builds several full mixtures
def test_heldout_is_disjoint_across_mixtures(data_dir):
    """The same prompt never trains in one mixture and sits held out in another."""
    mixes = [build_mixture(compose([f"data={d}"]).data, str(data_dir), s)
             for d, s in (("alpaca", 0), ("alpaca_dolly", 1), ("all_local", 2))]
    for a in mixes:
        for b in mixes:
            assert not {prompt_key(e.conversation) for e in a.train} & {prompt_key(e.conversation) for e in b.heldout}


@pytest.mark.slow  # tokenises all of Dolly
def test_token_budget_sizes_the_mixture(data_dir, tokenizer):
    cfg = compose(["data=dolly", "data.tokens=5000"])
    mix = build_mixture(cfg.data, str(data_dir), 0)
    data = tokenise_mixture(mix, cfg.template, tokenizer, 256, None, token_budget=5000)
    total = sum(len(r["input_ids"]) for r in data.train)
    assert total >= 5000 and total - len(data.train[-1]["input_ids"]) < 5000
    assert data.sources["dolly"]["tokens"] == total


def fingerprints(overrides, data_dir, tokenizer, seed=0):
    cfg = compose(overrides)
    mix = build_mixture(cfg.data, str(data_dir), seed)
    return mix.fingerprint, data_key(mix, cfg.template, tokenizer, 128)  # the key tokenise_mixture files under


def test_data_fingerprint_changes_when_and_only_when_it_should(tmp_path, data_dir, tokenizer):
    (tmp_path / "a").mkdir()
    other = {**FORMATS["dolly"][0], "instruction": "Who directed it?"}
    src = write_jsonl(tmp_path / "a" / "mine.jsonl", [FORMATS["dolly"][0], other])
    base = fingerprints(["data=file", f"data.path={src}"], data_dir, tokenizer)
    (tmp_path / "b").mkdir()
    moved = shutil.copy(src, tmp_path / "b" / "mine.jsonl")
    assert fingerprints(["data=file", f"data.path={moved}"], data_dir, tokenizer) == base  # location is not content
    assert fingerprints(["data=file", f"data.path={src}", "lr=1e-5", "lora.r=64"], data_dir, tokenizer) == base
    assert fingerprints(["data=file", f"data.path={src}"], data_dir, tokenizer, seed=1)[0] != base[0]
    assert fingerprints(["data=file", f"data.path={src}", "template=chatml"], data_dir, tokenizer)[1] != base[1]
    write_jsonl(src, [FORMATS["dolly"][0]])  # the file's content changed
    assert fingerprints(["data=file", f"data.path={src}"], data_dir, tokenizer)[0] != base[0]
    a = fingerprints(["data=alpaca_dolly"], data_dir, tokenizer)
    assert fingerprints(["data=alpaca_dolly", "data.sources.dolly.weight=0.3"], data_dir, tokenizer)[0] != a[0]


def test_token_cache_is_reused(tmp_path, data_dir, tokenizer):
    cfg = compose(["data=dolly", "data.examples=200"])
    mix = build_mixture(cfg.data, str(data_dir), 0)
    first = tokenise_mixture(mix, cfg.template, tokenizer, 128, str(tmp_path))
    assert first.key == data_key(mix, cfg.template, tokenizer, 128)
    again = tokenise_mixture(mix, cfg.template, tokenizer, 128, str(tmp_path))
    assert not first.from_cache and again.from_cache
    assert again.train == first.train and again.sources == first.sources
    other = tokenise_mixture(mix, cfg.template, tokenizer, 64, str(tmp_path))  # another max_length: its own entry
    assert not other.from_cache and len(list((tmp_path / "tokens").glob("*.npz"))) == 2


@pytest.mark.parametrize("overrides, message", [
    (["data.sources.alpaca.format=yaml"], r"data\.sources\.alpaca\.format='yaml'"),
    (["data=alpaca_dolly", "data.sources.dolly.weight=0"], r"data\.sources\.dolly\.weight must be > 0"),
    (["data=alpaca_dolly", "data.sources.dolly.weight=-1"], r"data\.sources\.dolly\.weight must be > 0"),
    (["data=alpaca_dolly", "++data.sources.dolly.examples=10"], r"data\.sources\.dolly sets both weight and examples"),
    (["data=alpaca_dolly", "data.sources.dolly.weight=null", "++data.sources.dolly.examples=10"], r"one mode per mixture"),
    (["data=file"], r"data=file needs data\.path"),
])
def test_bad_mixture_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))


def test_mixture_that_comes_out_empty_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"instruction": "a", "input": "", "output": ""}])
    with pytest.raises(DataError, match="came out empty"):
        build_mixture(file_data(path), str(tmp_path), 0)


def test_unknown_fields_cannot_be_detected(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"odd\.jsonl:1: cannot tell the format"):
        build_mixture(file_data(path), str(tmp_path), 0)


def test_a_source_added_on_the_command_line_is_checked():
    cfg = compose(["data=alpaca_dolly", "+data.sources.mine={path:/x.jsonl,weight:0.5}"])
    validate(cfg)
    with pytest.raises(ConfigError, match=r"data\.sources\.mine.*wieght"):
        validate(compose(["data=alpaca_dolly", "+data.sources.mine={path:/x.jsonl,wieght:0.5}"]))
    with pytest.raises(ConfigError, match=r"data\.sources\.dolly"):
        validate(compose(["data=alpaca_dolly", "data.sources.dolly.weight=heavy"]))
