"""A run's trained weights on disk: the adapter (or full model) with its train metrics, saved last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from sft_lab.files import atomic_write

TRAINED = "train_result.json"


def save_trained(model, tokenizer, run_dir: Path, metrics: dict, full_weights: Optional[dict] = None) -> Path:
    """Save the adapter (or the full model for r=0), then the train metrics last, atomically: their
    presence marks the weights complete. Checkpoints stay until the record says finished.
    `full_weights`: the gathered state dict of a sharded (FSDP, ZeRO) model."""
    out = run_dir / ("adapter" if hasattr(model, "peft_config") else "model")
    model.save_pretrained(out, **({"state_dict": full_weights} if full_weights is not None else {}))
    tokenizer.save_pretrained(out)
    atomic_write(out / TRAINED, json.dumps(metrics, default=float))
    return out


def trained_result(run_dir: Path) -> Optional[dict]:
    """The train metrics of an earlier attempt whose weights were saved completely, else None."""
    for name in ("adapter", "model"):
        path = run_dir / name / TRAINED
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None


def load_trained(model, run_dir: Path):
    """The base model with the saved adapter (or the saved full model): (model, folder)."""
    if (run_dir / "adapter" / TRAINED).is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, run_dir / "adapter"), run_dir / "adapter"
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=next(model.parameters()).dtype)
    return full.to(next(model.parameters()).device), run_dir / "model"
