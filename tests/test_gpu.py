"""The CUDA path: a run in bf16 on one GPU trains, evaluates, and records what ran (skipped without CUDA).

    python -m pytest -q -m gpu        # on a GPU machine
"""

import json

import pytest
from conftest import TINY, run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]


def test_a_bf16_run_on_one_gpu_trains_evaluates_and_records_its_device(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli([*TINY, "model.dtype=auto", "train.max_steps=8", "lr=1e-2", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [path] = runs.glob("*/record.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "finished"
    assert "cuda" in rec["env"]["device"] and "bfloat16" in rec["env"]["device"]  # auto: bf16 where supported
    fast = rec["train"]["fast_path"]
    assert not any(fast[p] for p in ("label_positions", "passes", "unpadded", "fused"))
    assert "on cuda" in fast["why_not"]["label_positions"]
    assert rec["train"]["final_loss"] < rec["train"]["first_loss"] and rec["train"]["peak_gpu_mb"] > 0
    assert rec["train"]["padding_free"] and rec["train"]["padding_fraction"] == 0  # train.padding_free
    assert 0 <= rec["eval"]["arc_easy"]["acc"]["value"] <= 1


@pytest.mark.parametrize("switch", ["train.liger=true", "train.torch_compile=true"])
def test_liger_and_compile_train_like_the_plain_step_and_are_recorded(tmp_path, switch):
    if "liger" in switch:
        pytest.importorskip("liger_kernel")
    losses = {}
    for name, extra in (("plain", []), ("switched", [switch])):
        runs = tmp_path / name
        out = run_cli([*TINY, "model.dtype=auto", "train.max_steps=8", "lr=1e-2", *extra, f"paths.runs_dir={runs}"],
                      cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        [path] = runs.glob("*/record.json")
        rec = json.loads(path.read_text())
        losses[name] = [c["loss"] for c in rec["train"]["loss_curve"]]
        key = switch.split("=")[0]
        assert rec["env"]["switches"][key] is bool(extra)
    assert losses["switched"] == pytest.approx(losses["plain"], rel=0.05)  # bf16 kernels: close, not equal
