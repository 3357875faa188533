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


def check_out(out: Path, overwrite: bool) -> None:
    """--out must be a folder that is new or empty; a non-empty one only with --overwrite."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder: give a folder for the model's files")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} is not empty: give a new folder, or --overwrite to replace its contents")


def load_adapted(run_dir: Path, allow_unfinished: bool = False):
    """(model with the run's trained weights, tokenizer), built from the run's own record."""
    from omegaconf import OmegaConf

    from sft_lab.models import load_model, load_tokenizer
    from sft_lab.record import read_record
    from sft_lab.artifacts import load_trained, trained_result

    record = read_record(run_dir)
    if record is None:
        raise ExportError(f"{run_dir} holds no record.json: give a run folder (runs/<fingerprint> or runs/by-name/<name>)")
    if record.config.get("baseline"):
        raise ExportError(f"{run_dir} is a base-model run: nothing was trained, so there is nothing to export")
    if trained_result(run_dir) is None:
        raise ExportError(f"{run_dir}: its training has not finished (status {record.status}); no weights to export")
    if record.status != "finished" and not allow_unfinished:
        why = {"pruned": "the sweep's pruner stopped it early, so its weights are not its config's result"}.get(
            record.status, "its weights may not be its config's final result")
        raise ExportError(f"{run_dir} has status {record.status}: {why}. Pass --allow-unfinished to export it anyway")
    cfg = OmegaConf.create(record.config)
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    base = load_model(cfg.model, tokenizer, cfg.paths.cache_dir, cfg.seed)
    model, _ = load_trained(base, run_dir)
    return model, tokenizer


def export(run_dir: Path, out: Path, merge: bool = True, push_to_hub: str | None = None, overwrite: bool = False,
           allow_unfinished: bool = False) -> Path:
    import os
    import shutil
    import tempfile

    check_out(out, overwrite)
    model, tokenizer = load_adapted(run_dir, allow_unfinished)
    if hasattr(model, "peft_config"):
        if not merge:
            raise ExportError("this run trained a LoRA adapter: pass --merge to fold it into the base weights "
                              f"(the adapter alone is already in {run_dir / 'adapter'})")
        model = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:  # written aside, then moved in: a failed export leaves --out as it was
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        for f in staging.rglob("*"):  # the usual file modes (the weights came out 0600)
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        if out.is_dir():
            shutil.rmtree(out)  # --overwrite (check_out refused a non-empty folder without it)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out folder")
    p.add_argument("--allow-unfinished", action="store_true", help="export a pruned or interrupted run's weights")
    args = p.parse_args(argv)
    try:
        out = export(args.run_dir, args.out, args.merge, args.push_to_hub, args.overwrite, args.allow_unfinished)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
