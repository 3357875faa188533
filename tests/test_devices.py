"""One job per GPU in a grid (hydra/launcher=gpus, sft_lab/devices.py), checked on CPU with a fake device list."""

import json
import os
from pathlib import Path

import pytest
from conftest import ROOT, compose, run_cli


def test_a_resident_copy_of_the_base_model_is_the_model_a_fresh_load_gives(monkeypatch, tokenizer):
    import torch

    from sft_lab import devices
    from sft_lab.models import load_model

    cfg = compose(["model=tiny"])

    def load_then_draw():
        model = load_model(cfg.model, tokenizer, cfg.paths.cache_dir, 3)
        return model, torch.rand(4)  # what the next draw (LoRA's init) would see

    torch.manual_seed(99)
    fresh, fresh_draw = load_then_draw()
    monkeypatch.setattr(devices, "in_pool", lambda: True)
    monkeypatch.setattr(devices, "_base_models", {})
    first, first_draw = load_then_draw()
    torch.manual_seed(12345)  # another job, another history: a random init seeds itself
    copy, copy_draw = load_then_draw()
    assert len(devices._base_models) == 1 and copy is not first
    for model in (first, copy):
        for (name, p), q in zip(fresh.state_dict().items(), model.state_dict().values()):
            assert torch.equal(p, q), name
    assert torch.equal(fresh_draw, first_draw) and torch.equal(fresh_draw, copy_draw)
    with torch.no_grad():  # a job trains its own copy, never the kept one
        next(copy.parameters()).add_(1.0)
    again, _ = load_then_draw()
    assert torch.equal(next(again.parameters()), next(fresh.parameters()))


def records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*/record.json"))]


@pytest.mark.e2e
def test_a_grid_runs_one_job_per_device_at_once_and_a_relaunch_skips_them_all(tmp_path):
    runs = tmp_path / "runs"
    env = {"SFT_LAB_DEVICES": "0,1,2,3"}  # a fake list on a CPU machine: each job must get its own
    args = ["-m", "+experiment=toy", "data=toy_first,toy_last", "seed=0,1", "train.max_steps=40",
            "hydra/launcher=gpus", f"paths.runs_dir={runs}"]
    os.environ.update(env)
    try:
        out = run_cli(args, tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        done = records(runs)
        assert len(done) == 4 and all(r["status"] == "finished" for r in done)
        assert sorted(r["env"]["cuda_visible_devices"] for r in done) == ["0", "1", "2", "3"]
        assert len({r["env"]["pid"] for r in done}) == 4  # four resident workers
        assert max(r["started"] for r in done) < min(r["ended"] for r in done)  # all four at once
        again = run_cli(args, tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        assert records(runs) == done  # nothing ran twice
        assert (again.stdout + again.stderr).lower().count("already finished") >= 4
    finally:
        for key in env:
            os.environ.pop(key, None)


@pytest.mark.e2e
def test_the_gpu_pool_without_a_device_says_so_and_names_the_way_out(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the pool has a device")
    os.environ.pop("SFT_LAB_DEVICES", None)
    out = run_cli(["-m", "+experiment=toy", "seed=0", "hydra/launcher=gpus", f"paths.runs_dir={tmp_path / 'runs'}"],
                  tmp_path)
    text = out.stdout + out.stderr
    assert "hydra/launcher=gpus: no device to hand out" in text and "hydra/launcher=joblib" in text
    assert "Traceback" not in text and not list((tmp_path / "runs").glob("*/record.json"))
