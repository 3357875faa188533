"""The CPU fast path: what makes a training step cheap on CPU, decided once per run.

Four parts, each the same loss and gradients within float rounding as the plain step:
- label_positions: the LM head and cross-entropy on answer positions only (`loss.answer_loss`);
- passes: a batch runs as passes of about PASS_TOKENS tokens whose gradients add up (`passes`);
- unpadded: a pass's rows laid end to end without padding, where the model allows (`unpadded`);
- fused: a LoRA projection, an RMSNorm and a SwiGLU product each as one autograd node (`fused`).

`train.fast_path=off` turns all of them off, `train.fast_path_off=[fused]` single ones. `resolve` says which
ran and why the others did not; the record keeps that (record.train.fast_path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PARTS = ("label_positions", "passes", "unpadded", "fused")


@dataclass(frozen=True)
class FastPath:
    label_positions: bool = False
    passes: bool = False
    unpadded: bool = False  # allowed for the model; a pass whose rows exceed its sliding window is padded
    fused: bool = False
    why_not: dict[str, str] = field(default_factory=dict)  # part -> why it is off

    def record(self) -> dict:
        return asdict(self)


def resolve(mode: str, off: list[str], device: str, processes: int, sharded: bool,
            micro_batch_size: int | None, model=None) -> FastPath:
    """Which parts apply to this run: mode auto|off, `off` the parts left out by name."""
    why: dict[str, str] = {}

    def refuse(parts, reason):
        for p in parts:
            why.setdefault(p, reason)

    if mode == "off":
        refuse(PARTS, "train.fast_path=off")
    refuse([p for p in PARTS if p in off], "train.fast_path_off")
    if device != "cpu":
        refuse(PARTS, f"on {device} the model's own loss and kernels are faster (benchmarks/gpu/throughput.py)")
    if sharded:
        refuse(PARTS, "sharded (FSDP, ZeRO): the LM head runs only inside the model's own forward")
    if processes > 1:
        refuse(["passes", "unpadded"], f"{processes} processes: each takes even micro-batches")
    if micro_batch_size:
        refuse(["passes", "unpadded"], f"train.micro_batch_size={micro_batch_size} sets the passes")
    refuse(["unpadded"] if "passes" in why else [], "laid out per pass: needs passes")
    if model is not None and "unpadded" not in why:
        from sft_lab.cpu import unpadded

        reason = unpadded.unsupported(model)
        if reason:
            refuse(["unpadded"], reason)
    return FastPath(**{p: p not in why for p in PARTS}, why_not=why)
