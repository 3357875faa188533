"""The CPU fast path is one decision per run (sft_lab.cpu.resolve): what ran, and why the rest did not."""

import pytest
from conftest import tiny_lora_model

from sft_lab.cpu import PARTS, resolve


def test_auto_on_one_cpu_process_uses_every_part():
    fast = resolve("auto", [], "cpu", 1, False, None)
    assert all(getattr(fast, p) for p in PARTS) and fast.why_not == {}


@pytest.mark.parametrize("args, off, reason", [
    (("off", [], "cpu", 1, False, None), set(PARTS), "train.fast_path=off"),
    (("auto", ["fused"], "cpu", 1, False, None), {"fused"}, "train.fast_path_off"),
    (("auto", [], "cuda", 1, False, None), set(PARTS), "on cuda"),
    (("auto", [], "cpu", 1, True, None), set(PARTS), "sharded"),
    (("auto", [], "cpu", 2, False, 2), {"passes", "unpadded"}, "2 processes"),
    (("auto", [], "cpu", 1, False, 1), {"passes", "unpadded"}, "train.micro_batch_size=1"),
    (("auto", ["passes"], "cpu", 1, False, None), {"passes", "unpadded"}, "train.fast_path_off"),
])
def test_each_part_left_out_says_why(args, off, reason):
    fast = resolve(*args)
    assert {p for p in PARTS if not getattr(fast, p)} == off
    assert set(fast.why_not) == off and reason in fast.why_not[sorted(off)[0]]
    assert fast.record()["why_not"] == fast.why_not


def test_a_model_that_cannot_lay_out_its_passes_is_named():
    model = tiny_lora_model("model.attn_implementation=eager")
    fast = resolve("auto", [], "cpu", 1, False, None, model)
    assert fast.passes and not fast.unpadded and "eager" in fast.why_not["unpadded"]
