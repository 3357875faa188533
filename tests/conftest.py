"""Tests compose the real config, shrink it, and point outputs at tmp_path. No network anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SFT_LAB_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
os.environ.setdefault("SFT_LAB_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# Under pytest-xdist (-n N) the cores are split between the workers, and the subprocesses they start.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0))
                                                     // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from sft_lab.config import compose  # noqa: E402,F401  (the tests compose the real config with it)

# Small enough for seconds on 2 CPU cores; real data, real training, real lm-eval.
TINY = [
    "model=tiny", "tracking=none", "data.examples=64", "data.heldout_max=16", "train.max_steps=4",
    "train.batch_size=4", "train.max_length=128", "train.logging_steps=1", "eval.tasks=[arc_easy,heldout]",
    "eval.limit=8", "eval.batch_size=8",
]


def tiny_lora_model(*overrides: str, seed: int = 0):
    """The tiny model with a LoRA adapter whose B matrices are drawn (a trained-like adapter, so every LoRA
    matrix gets a gradient and B's product is not zero), in training mode."""
    import torch

    from sft_lab.models import add_lora, load_model, load_tokenizer

    cfg = compose(["model=tiny", *overrides])
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = add_lora(load_model(cfg.model, tokenizer, cfg.paths.cache_dir, seed), cfg.lora)
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model.train()


def run_cli(args: list[str], cwd: Path, timeout: int = 900, module: str = "sft_lab.run") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def kill_after_first_checkpoint(module: str, args: list[str], runs: Path, cwd: Path, env: dict,
                                sig: int = 9) -> int:
    """Start `python -m module args`, and kill it (-9 by default) once a complete training checkpoint is on
    disk; returns its exit status."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("*/checkpoints/checkpoint-*/sft_lab_counts.json")):
        assert proc.poll() is None, f"{module} ended before it was killed"
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.Signals(sig))
    return proc.wait(timeout=120)


@pytest.fixture(scope="session")
def tokenizer():
    from sft_lab.models import load_tokenizer

    return load_tokenizer(compose(["model=tiny"]).model, compose().paths.cache_dir)


@pytest.fixture
def data_dir() -> Path:
    if not (DATA_DIR / "alpaca.json").is_file():
        pytest.fail(f"the shared data is not at {DATA_DIR}; set SFT_LAB_DATA_DIR")
    return DATA_DIR


# The slowest files first (measured: pytest --durations=0), so that xdist's workers (-n 2 --dist loadfile)
# start them early and finish together.
SLOWEST_FILES = ["test_run.py", "test_ablate.py", "test_significance.py", "test_sweep.py", "test_safety.py",
                 "test_distributed.py", "test_generation_e2e.py", "test_smollm2.py", "test_report.py",
                 "test_devices.py", "test_tables.py", "test_scoring.py", "test_reliability.py", "test_knobs.py",
                 "test_tracking.py", "test_export.py"]


def _slowest_first(item) -> int:
    name = item.path.name
    return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)


def pytest_collection_modifyitems(config, items):
    """The slowest files first; `gpu` tests need CUDA: skipped, and saying so, on a machine without it."""
    import importlib.util

    items.sort(key=_slowest_first)  # stable: a file's tests keep their order

    if importlib.util.find_spec("torch") is None:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (the gpu marker)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
