"""The run record (record.json): the contract between a run and everything after it.

`RunRecord` is its one typed form, versioned; the pipeline, the sweep and the tables read and write
it only through `read_record` / `write_record`. Written atomically (temp file, fsync, rename) so a
crash never leaves half a file. The fingerprint hashes the parts of the config that change what is
trained or measured, so the same config always lands in the same run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from sft_lab.errors import UserError
from sft_lab.files import atomic_write
from sft_lab.tasks import is_generative, is_heldout

# Keys that say where or how to log, not what is trained or measured.
NOT_FINGERPRINTED = ("paths", "tracking", "force")
# Keys that say how a result is computed, not what it is (the same within float rounding).
HOW_NOT_WHAT = {("train", "fast_path"), ("train", "fast_path_off"), ("eval", "scorer"), ("train", "liger"),
               ("train", "torch_compile"), ("train", "padding_free")}
RECORD = "record.json"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "lm_eval", "hydra-core", "omegaconf", "wandb", "optuna")


# Keys added after runs were recorded, with the value those runs had: hashed only when set otherwise,
# so adding an option never moves existing runs to new folders.
ADDED_LATER = {("model", "attn_implementation"): "sdpa", ("model", "load_in_4bit"): False,
               ("train", "gradient_checkpointing"): False, ("train", "epochs"): None, ("train", "packing"): False,
               ("train", "train_on_prompt"): False, ("train", "neftune_alpha"): None,
               ("train", "optimizer"): "adamw_torch",
               ("train", "micro_batch_size"): None, ("lora", "use_dora"): False, ("lora", "use_rslora"): False,
               ("eval", "heldout"): "own", ("eval", "heldout_max_tokens"): None,
               ("eval", "max_gen_toks"): 256, ("eval", "gen_batch_size"): 32,
               ("train", "max_tokens"): None, ("eval", "split"): "all", ("eval", "dev_fraction"): 0.5,
               ("eval", "every"): 0, ("eval", "every_tokens"): 0, ("eval", "every_tasks"): None,
               ("eval", "every_limit"): 50}
CURVE_KEYS = ("every", "every_tokens", "every_tasks", "every_limit")  # nothing trained, no curve: not a base run's


def fingerprint(config: dict[str, Any]) -> str:
    semantic = {k: v for k, v in config.items() if k not in NOT_FINGERPRINTED}
    for group, key in HOW_NOT_WHAT:
        if isinstance(semantic.get(group), dict):
            semantic[group] = {k: v for k, v in semantic[group].items() if k != key}
    for (group, key), value in ADDED_LATER.items():
        if isinstance(semantic.get(group), dict) and semantic[group].get(key, value) == value:
            semantic[group] = {k: v for k, v in semantic[group].items() if k != key}
    if config.get("baseline"):  # nothing is trained: one base run per model and eval protocol
        drop = {"lora", "train", "lr", "seed"}
        tasks = config.get("eval", {}).get("tasks", [])
        if not any(is_heldout(t) for t in tasks):  # items from the data
            drop |= {"data", "template"}
        if any(is_generative(t) for t in tasks):  # prompted through the template
            drop -= {"template"}
        semantic = {k: v for k, v in semantic.items() if k not in drop}
        if isinstance(semantic.get("eval"), dict):
            semantic["eval"] = {k: v for k, v in semantic["eval"].items() if k not in CURVE_KEYS}
    blob = json.dumps(semantic, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_dir_for(runs_dir: str | Path, fp: str) -> Path:
    return Path(runs_dir) / fp[:16]


STATUSES = ("running", "finished", "pruned", "failed", "interrupted")
VERSION = 2  # 1: the untyped record (same keys, no "version"); read as is


class CorruptRecord(UserError):
    """A record.json that cannot be read; the message names the file and what to do."""


@dataclass
class RunRecord:
    """What one run was and what it measured. Every section is plain JSON; `config` is the resolved config."""

    status: str
    fingerprint: str
    run_dir: str
    config: dict[str, Any]
    name: str = ""
    group: Optional[str] = None
    started: Optional[str] = None
    ended: Optional[str] = None
    updated: Optional[str] = None
    attempts: int = 1
    data: dict[str, Any] = field(default_factory=dict)  # mixture, sources, token counts
    env: dict[str, Any] = field(default_factory=dict)  # git, packages, device, peak memory
    train: Optional[dict[str, Any]] = None  # loss curve, tokens, wall time; None for the base model
    artifacts: dict[str, Any] = field(default_factory=dict)  # saved weights
    eval: Optional[dict[str, dict[str, dict[str, Optional[float]]]]] = None  # task -> metric -> {value, stderr}
    eval_protocol: Optional[dict[str, Any]] = None
    sweep: Optional[dict[str, Any]] = None  # {study, trial, state} for a sweep's runs
    overrides: Optional[list[str]] = None  # the command line's (or the sweep trial's) Hydra overrides
    wandb_run_id: Optional[str] = None
    error: Optional[str] = None
    warnings: list[str] = field(default_factory=list)  # results that are there but suspect (e.g. every answer empty)
    traceback: Optional[str] = None
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were

    @property
    def done(self) -> bool:
        """Finished or pruned: its results are final, and a relaunch skips it."""
        return self.status in ("finished", "pruned")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {"version": d.pop("version"), **d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | str = RECORD) -> "RunRecord":
        if not isinstance(d, dict) or "status" not in d:
            raise CorruptRecord(f"{path} is not a run record (no 'status'). Re-run with force=true to move it "
                                "aside and run the config again.")
        version = d.get("version", 1)
        if not isinstance(version, int) or version > VERSION:
            raise CorruptRecord(f"{path} is record version {version!r}; this sft-lab reads up to {VERSION}. "
                                "Update sft-lab to read it.")
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("fingerprint", "run_dir", "config") if k not in d]
        if missing or d["status"] not in STATUSES:
            what = f"lacks {', '.join(missing)}" if missing else f"has status {d['status']!r}"
            raise CorruptRecord(f"{path} {what}, so it is not a run record sft-lab wrote. Re-run with force=true "
                                "to move it aside and run the config again.")
        return cls(**{k: v for k, v in d.items() if k in known and k != "version"}, version=VERSION,
                   extra={k: v for k, v in d.items() if k not in known})


def write_record(run_dir: Path, record: RunRecord) -> None:
    """Atomically: a reader sees the old record or the new one, never half of one."""
    record.updated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write(Path(run_dir) / RECORD, json.dumps(record.to_dict(), indent=2, default=jsonable))


def read_record(run_dir: Path) -> Optional[RunRecord]:
    """The run folder's record; None when there is none; CorruptRecord (naming the file) when unreadable."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecord(f"{path} is corrupt ({type(e).__name__}: {e}). Re-run with force=true to move it to "
                            f"{Path(run_dir) / 'previous'} and run the config again, or restore it from a backup.") from None
    return RunRecord.from_dict(raw, path)


class RunLocked(UserError):
    pass


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """An exclusive lock on the run folder for as long as a process runs it; the OS drops it on death."""
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLocked(f"{run_dir} is being run by another live process") from None
    try:
        yield
    finally:
        lock.release()


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds the run folder's lock now."""
    from filelock import FileLock, Timeout

    if not (run_dir / ".lock").exists():
        return False
    try:
        with FileLock(run_dir / ".lock").acquire(timeout=0):
            return False
    except Timeout:
        return True


def archive(run_dir: Path) -> Path:
    """Move a finished run's results aside (force=true) so nothing finished is overwritten."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, i = run_dir / "previous" / stamp, 1
    while target.exists():
        target, i = run_dir / "previous" / f"{stamp}-{i}", i + 1
    target.mkdir(parents=True)
    for item in run_dir.iterdir():
        if item.name == "run.log":  # the new run is already logging to it: keep a copy, start it afresh
            import shutil

            shutil.copy2(item, target / item.name)
            item.open("w").close()
        elif item.name not in ("previous", ".lock"):
            item.rename(target / item.name)
    return target


def restore(run_dir: Path, archived: Path) -> None:
    """Undo `archive`: a forced re-run that failed before it started puts the old results back."""
    for item in run_dir.iterdir():
        if item.name not in ("previous", ".lock"):
            _remove(item)
    for item in archived.iterdir():
        item.rename(run_dir / item.name)
    archived.rmdir()


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def environment(device: str | None = None) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        **git_state(), "packages": versions, "python": platform.python_version(), "device": device,
        "host": socket.gethostname(), "pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"git_sha": None, "git_dirty": None}


def jsonable(x):
    """JSON fallback for numpy scalars and the like."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)
