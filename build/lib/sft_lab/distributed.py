"""Data-parallel runs under `torchrun`, `accelerate launch` or a multi-task Slurm job: which process does what.

Every rank composes the same config, computes the same fingerprint, loads the same inputs and trains
its share of every batch (transformers' Trainer runs DDP, or FSDP / DeepSpeed ZeRO under
`accelerate launch` with a config from conf/accelerate/). Rank 0 alone takes the run lock, writes the record, logs to W&B, saves the
weights and runs lm-eval; the other ranks wait at a barrier after training and exit 0. Sharded, every
rank first joins in gathering the full weights, which rank 0 saves and evaluates unsharded. Outside a launcher every
function here is a no-op, so one process behaves as before.
"""

from __future__ import annotations

import os
from typing import Any

from sft_lab.errors import UserError


class RankFailed(UserError):
    """Another rank failed before training; this one stops instead of waiting forever."""


def adopt_cluster_ranks() -> None:
    """A Slurm (or submitit local) job with several tasks: export the torch.distributed variables
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) that torchrun would have set."""
    if "WORLD_SIZE" in os.environ or not any(k.startswith("SUBMITIT_") for k in os.environ):
        return
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job after all
        return
    if tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def sharding() -> str | None:
    """The sharding engine `accelerate launch` set up in every rank's environment: fsdp1, fsdp2,
    deepspeed-zero2/3 (conf/accelerate/), or None for DDP and single processes."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return f"fsdp{os.environ.get('FSDP_VERSION', '1')}"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return f"deepspeed-zero{os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    return None


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the process group the launcher set up (gloo on CPU, nccl on GPUs); no-op for one process."""
    adopt_cluster_ranks()
    if world_size() > 1:
        from accelerate import PartialState

        PartialState()


def _group_ready() -> bool:
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank; [obj] for one process."""
    if not _group_ready():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_ok(error: BaseException | None) -> None:
    """Collective check-in: raise on every rank if any rank failed (this rank's own error first)."""
    failed = [(r, msg) for r, msg in enumerate(gather(None if error is None else f"{type(error).__name__}: {error}"))
              if msg is not None]
    if error is not None:
        raise error
    if failed:
        r, msg = failed[0]
        raise RankFailed(f"rank {r} failed before training ({msg}); rank {rank()} stops too")


def layout(per_device_batch: int, grad_accum: int) -> dict[str, Any]:
    """What the record says about the processes: world size, per-device and global batch, sharding."""
    n = world_size()
    return {"world_size": n, "per_device_batch": per_device_batch, "global_batch": per_device_batch * grad_accum * n,
            "sharding": sharding()}
