"""Data-parallel runs under torchrun on CPU (gloo): one record, rank 0's alone, the same training as one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY, run_cli

# Global batch 4 either way: 2 ranks × 2, or 1 process × 4. Random (not length-grouped) order, which
# sharding keeps: rank r takes every other per-device batch of the same permutation.
DDP = [*TINY, "train.max_steps=8", "train.group_by_length=false", "eval.tasks=[heldout]"]


def torchrun(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sft_lab.run", *args]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=timeout)


def records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*/record.json"))]


@pytest.mark.e2e
def test_torchrun_two_ranks_train_like_one_process_and_rank_0_alone_records(tmp_path):
    out = torchrun([*DDP, "train.batch_size=2", f"paths.runs_dir={tmp_path / 'dp'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [dp] = records(tmp_path / "dp")
    assert dp["status"] == "finished"
    assert (dp["env"]["world_size"], dp["env"]["per_device_batch"], dp["env"]["global_batch"]) == (2, 2, 4)
    out = run_cli([*DDP, "train.batch_size=4", f"paths.runs_dir={tmp_path / 'sp'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [sp] = records(tmp_path / "sp")
    assert sp["env"]["world_size"] == 1
    # Same batches, gradients averaged over the same tokens: the loss curves agree to float noise.
    dp_curve, sp_curve = [c["loss"] for c in dp["train"]["loss_curve"]], [c["loss"] for c in sp["train"]["loss_curve"]]
    assert len(dp_curve) == len(sp_curve) == 8
    assert max(abs(a - b) for a, b in zip(dp_curve, sp_curve)) < 1e-3
    # Both ranks' batches are counted once: the same examples and tokens as one process.
    assert dp["train"]["trained_on"] == sp["train"]["trained_on"]
    assert dp["train"]["tokens_seen"] == sp["train"]["tokens_seen"]
    assert abs(dp["eval"]["heldout"]["loss"]["value"] - sp["eval"]["heldout"]["loss"]["value"]) < 1e-3

    again = torchrun([*DDP, "train.batch_size=2", f"paths.runs_dir={tmp_path / 'dp'}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("Already finished") + again.stdout.count("Already finished") == 2  # every rank
    assert records(tmp_path / "dp")[0]["updated"] == dp["updated"]


@pytest.mark.e2e
def test_killing_rank_1_mid_training_then_relaunching_resumes_from_the_checkpoint(tmp_path):
    args = [*DDP, "train.batch_size=2", "train.max_steps=40", "train.save_steps=10", f"paths.runs_dir={tmp_path}/runs"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sft_lab.run", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = tmp_path / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("*/checkpoints/checkpoint-*/sft_lab_counts.json")):
        assert proc.poll() is None, "torchrun ended before rank 1 was killed"
        time.sleep(0.2)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    assert proc.wait(timeout=120) != 0  # torchrun stops rank 0 and fails
    [killed] = records(runs)
    # Rank 0 sees its peer vanish (failed), or torchrun stops it first with SIGTERM (interrupted, or still running
    # if it had no time to write): no results either way.
    assert killed["status"] in ("failed", "interrupted", "running") and killed.get("train") is None

    out = torchrun(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [done] = records(runs)
    assert done["status"] == "finished" and done["attempts"] == 2
    assert done["train"]["resumed_from"] and "checkpoint-" in done["train"]["resumed_from"]
    assert [c["step"] for c in done["train"]["loss_curve"]][-1] == 40


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of the worker with RANK=rank among the launcher's children."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(child)
    raise AssertionError(f"no rank {rank} among the children of {launcher}")


@pytest.mark.e2e
def test_a_grid_under_torchrun_is_refused_with_the_way_out(tmp_path):
    out = torchrun(["-m", *DDP, "data=alpaca,dolly", f"paths.runs_dir={tmp_path}/runs"], tmp_path, timeout=300)
    assert out.returncode != 0
    assert "-m (a grid) under torchrun" in out.stderr
    assert not list((tmp_path / "runs").glob("*/record.json"))


@pytest.mark.e2e
def test_a_grid_through_the_submitit_launcher_runs_each_config_on_two_ranks(tmp_path):
    """The Slurm path, run locally: hydra/launcher=local is submitit_local, the slurm preset's twin."""
    runs = tmp_path / "runs"
    out = run_cli(["-m", *DDP, "train.batch_size=2", "seed=0,1", "hydra/launcher=local",
                   "hydra.launcher.tasks_per_node=2", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = records(runs)
    assert sorted(r["config"]["seed"] for r in recs) == [0, 1]
    assert all(r["status"] == "finished" and r["env"]["world_size"] == 2 for r in recs)
    assert len({r["group"] for r in recs}) == 1


@pytest.mark.e2e
def test_fsdp_through_accelerate_launch_on_cpu_is_refused_before_any_run_folder(tmp_path):
    # accelerate enables FSDP only for GPU process groups: on CPU it would train unsharded without a word.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "conf/accelerate/fsdp.yaml"),
           "--num_processes", "1", "-m", "sft_lab.run", *TINY, f"paths.runs_dir={tmp_path / 'runs'}"]
    out = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "FSDP" in out.stderr and "needs CUDA GPUs" in out.stderr and "torchrun" in out.stderr
    assert not list((tmp_path / "runs").glob("*/record.json"))
