"""The usual SFT knobs: typed, checked, recorded, and doing what they say."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, compose, run_cli

from sft_lab.config import ConfigError, validate
from sft_lab.templates import IGNORE
from sft_lab.tokens import Collator, pack, train_on_prompt


@pytest.mark.parametrize("overrides, says", [
    (["train.epochs=2"], "set exactly one of train.max_steps, train.epochs and train.max_tokens"),
    (["train.max_steps=null"], "set exactly one of train.max_steps, train.epochs and train.max_tokens"),
    (["train.epochs=0", "train.max_steps=null"], "train.epochs must be > 0"),
    (["train.neftune_alpha=-1"], "train.neftune_alpha must be > 0"),
    (["lora=full", "lora.use_dora=true"], "need a LoRA adapter"),
])
def test_bad_knob_values_name_the_key(overrides, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        validate(compose(overrides))


def test_packed_rows_attend_only_within_each_example():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 100, (n,)).tolist(), "labels": [IGNORE] * 2 + [1] * (n - 2), "source": s}
            for n, s in ((5, "a"), (7, "b"), (6, "a"), (9, "b"))]
    packs = pack(rows, max_length=13)
    assert [p["lengths"] for p in packs] == [[5, 7], [6], [9]]
    assert packs[0]["labels"][5] == IGNORE  # the second example's first token is not predicted from the first
    batch = Collator(0)(packs)
    assert batch["counts"]["sources"] == {"a": {"examples": 2, "tokens": 11, "label_tokens": 7},
                                         "b": {"examples": 2, "tokens": 16, "label_tokens": 12}}
    for impl in ("sdpa", "eager"):
        config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, attn_implementation=impl)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
        alone = [model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows[:2]]
        assert torch.allclose(packed[0, :5], alone[0], atol=1e-5), impl
        assert torch.allclose(packed[0, 5:12], alone[1], atol=1e-5), impl


def test_train_on_prompt_makes_every_token_a_label():
    rows = train_on_prompt([{"input_ids": [5, 6, 7], "labels": [IGNORE, IGNORE, 7], "source": "a"}])
    assert rows[0]["labels"] == [5, 6, 7]


def seen_tokens(record: dict) -> int:
    return sum(s["tokens"] for s in record["train"]["trained_on"].values())


@pytest.mark.e2e
def test_knobs_train_and_are_recorded(tmp_path):
    runs = tmp_path / "runs"
    base = [*TINY, "eval.tasks=[heldout]", "train.max_steps=null", "train.epochs=1", f"paths.runs_dir={runs}"]
    out = run_cli(["-m", *base, "train.packing=false,true"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    out = run_cli([*base, "train.train_on_prompt=true", "train.neftune_alpha=5", "train.optimizer=sgd",
                   "lora.use_dora=true", "lora.use_rslora=true", "train.logging_steps=1"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    by = {(r["config"]["train"]["packing"], r["config"]["train"]["train_on_prompt"]): r for r in recs}
    plain, packed, knobs = by[(False, False)], by[(True, False)], by[(False, True)]
    n = plain["data"]["train_examples"]
    assert plain["train"]["steps"] == -(-n // 4)  # one epoch of batches of 4
    assert packed["train"]["steps"] < plain["train"]["steps"]  # several examples per row
    assert packed["train"]["trained_on"] == plain["train"]["trained_on"]  # the same examples, once each
    # tokens_seen counts real tokens under packing too (the Trainer's count overflowed to -2.8e19)
    assert packed["train"]["tokens_seen"] == plain["train"]["tokens_seen"] == seen_tokens(plain) > 0
    from sft_lab.analysis.collect import collect
    from sft_lab.analysis.table import build

    df, _ = collect(runs)
    cost = {r.labels[0]: r.cost for r in build(df[df["train.train_on_prompt"] == False], ["train.packing"]).rows}  # noqa: E712
    assert cost[True].startswith(f"{packed['train']['tokens_seen'] / 1e3:.1f}k tok")
    seen = knobs["train"]["trained_on"]["alpaca"]
    assert seen["label_tokens"] == seen["tokens"]  # the prompt is in the loss
    assert knobs["status"] == "finished" and knobs["config"]["lora"]["use_dora"] is True


@pytest.mark.parametrize("lengths, budget, want", [
    ([200, 120, 110, 60], 256, [[0], [1, 2], [3]]),  # 2 x 120 fits 256 tokens, 3 x 120 does not
    ([60, 60, 60, 60], 256, [[0, 1, 2, 3]]),
    ([300, 250], 256, [[0], [1]]),  # a row longer than the budget runs alone
    ([64, 200], 256, [[1], [0]]),  # longest first: 2 x 200 does not fit
    ([100, 200, 90], 256, [[1], [0, 2]]),  # rows of similar length together, whatever the batch order
    ([247, 137, 127, 108], 512, [[0], [1, 2, 3]]),  # 658 tokens computed, not 748 as [[0, 1], [2, 3]]
    ([100, 100, 90, 90], 512, [[0, 1, 2, 3]]),  # 400 tokens in one pass beat 200 + 180 in two
    ([100, 100, 30, 30], 512, [[0, 1], [2, 3]]),  # 260 tokens in two passes beat 400 in one
    ([], 256, []),
])
def test_passes_keep_each_forward_within_the_token_budget(lengths, budget, want):
    from sft_lab.cpu.passes import passes

    got = passes(lengths, budget)
    assert got == want
    assert all(len(rows) == 1 or len(rows) * max(lengths[r] for r in rows) <= budget for rows in got)
