"""One job per GPU in a grid: `python -m sft_lab.run -m ... hydra/launcher=gpus`.

The grid's jobs run in resident joblib (loky) worker processes, as many as `hydra.launcher.n_jobs` (default:
one per device). Each worker claims one slot of the pool (a file lock in the grid's folder, held for the
worker's life) and with it one device, CUDA_VISIBLE_DEVICES, before CUDA starts; slot i is device i mod
len(devices), so n_jobs = k x devices runs k jobs per device. The worker keeps its libraries imported and the
base model loaded (on the host) between its jobs.

The devices: $SFT_LAB_DEVICES (a list such as 0,1,2,3: a subset, or a fake list on a CPU machine for tests),
or the GPUs this process sees.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from sft_lab.errors import ConfigError

LAUNCHER = "gpus"  # conf/hydra/launcher/gpus.yaml
_claimed: dict = {}  # this process's slot: {"slot", "device", "lock"}


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES names them for its children."""
    import torch

    n = torch.cuda.device_count()
    named = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:n] if len(named) >= n else [str(i) for i in range(n)]


def pool_devices() -> list[str]:
    """$SFT_LAB_DEVICES, or the visible GPUs (none on a CPU machine)."""
    named = [d.strip() for d in os.environ.get("SFT_LAB_DEVICES", "").split(",") if d.strip()]
    return named or visible_gpus()


def pool_size() -> int:
    """hydra.launcher.n_jobs of the gpus launcher: one job per device (at least one). Resolved in the launching
    process, which passes the list on in $SFT_LAB_DEVICES: a worker must not ask CUDA before it has its device."""
    devices = pool_devices()
    if devices:
        os.environ["SFT_LAB_DEVICES"] = ",".join(devices)
    return max(1, len(devices))


def in_pool() -> bool:
    """Inside a job of the gpus launcher."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("hydra/launcher") == LAUNCHER
    except ValueError:  # not under Hydra
        return False


def claim() -> Optional[str]:
    """This worker's device (claimed once, kept for its life), exported as CUDA_VISIBLE_DEVICES; None outside
    the pool. ConfigError without a device, or if every slot is held (more workers than slots)."""
    if not in_pool():
        return None
    if _claimed:
        return _claimed["device"]
    from filelock import FileLock, Timeout
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    devices = pool_devices()
    if not devices:
        raise ConfigError("hydra/launcher=gpus: no device to hand out (no GPU visible and SFT_LAB_DEVICES unset); "
                          "on CPU use hydra/launcher=joblib")
    folder = Path(hc.sweep.dir) / ".devices"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(int(hc.launcher.n_jobs)):
        lock = FileLock(folder / f"slot-{slot}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        device = devices[slot % len(devices)]
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        _claimed.update(slot=slot, device=device, lock=lock)
        return device
    raise ConfigError(f"hydra/launcher=gpus: all {hc.launcher.n_jobs} slots of {folder} are held by other workers")


_base_models: dict = {}  # resident workers: the base model as loaded, on the host, by what it was loaded from


def resident_copy(key: str, load, seeds_itself: bool):
    """In a pool worker, the base model loaded once per worker and copied for each job (`load()` -> model on the
    host); elsewhere, `load()`. A copy leaves torch's random state as a load would: a load that seeds itself
    (a random init) ends where it ended the first time; a load that draws nothing leaves it alone; a load that
    draws without seeding is not kept (each job loads again)."""
    if not in_pool():
        return load()
    import copy

    import torch

    if key in _base_models:
        model, after = _base_models[key]
        if after is not None:
            torch.set_rng_state(after)
        return copy.deepcopy(model)
    before = torch.get_rng_state()
    model = load()
    after = torch.get_rng_state()
    if seeds_itself or torch.equal(before, after):
        _base_models.clear()  # one base model at a time
        _base_models[key] = (copy.deepcopy(model), after if seeds_itself else None)
    return model
