"""Export a finished run's weights as a standalone Hugging Face model.

    python -m sft_lab.export RUN_DIR --merge --out DIR              # LoRA merged into the base weights
    python -m sft_lab.export RUN_DIR --merge --out DIR --push-to-hub ORG/NAME   # online: also upload it

The merged model loads with AutoModelForCausalLM.from_pretrained(DIR) alone, no peft, and gives the
adapted model's logits. A full fine-tune (lora.r=0) is saved as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sft_lab.errors import UserError


class ExportError(UserError):
    pass


def load_adapted(run_dir: Path):
    """(model with the run's trained weights, tokenizer), built from the run's own record."""
    from omegaconf import OmegaConf

    from sft_lab.models import load_model, load_tokenizer
    from sft_lab.record import read_record
    from sft_lab.train import load_trained, trained_result

    record = read_record(run_dir)
    if record is None:
        raise ExportError(f"{run_dir} holds no record.json: give a run folder (runs/<fingerprint> or runs/by-name/<name>)")
    if record.config.get("baseline"):
        raise ExportError(f"{run_dir} is a base-model run: nothing was trained, so there is nothing to export")
    if trained_result(run_dir) is None:
        raise ExportError(f"{run_dir}: its training has not finished (status {record.status}); no weights to export")
    cfg = OmegaConf.create(record.config)
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    base = load_model(cfg.model, tokenizer, cfg.paths.cache_dir, cfg.seed)
    model, _ = load_trained(base, run_dir)
    return model, tokenizer


def export(run_dir: Path, out: Path, merge: bool = True, push_to_hub: str | None = None) -> Path:
    model, tokenizer = load_adapted(run_dir)
    if hasattr(model, "peft_config"):
        if not merge:
            raise ExportError("this run trained a LoRA adapter: pass --merge to fold it into the base weights "
                              f"(the adapter alone is already in {run_dir / 'adapter'})")
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if push_to_hub:
        model.push_to_hub(push_to_hub)
        tokenizer.push_to_hub(push_to_hub)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sft_lab.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished run's folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the standalone model")
    p.add_argument("--merge", action="store_true", help="merge the LoRA adapter into the base weights")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload the model to this Hub repo (online)")
    args = p.parse_args(argv)
    try:
        out = export(args.run_dir, args.out, args.merge, args.push_to_hub)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
