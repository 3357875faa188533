"""Pruning efficiency: the full lr x lora.r grid against a pruned TPE search with the same number of trials.

    python -m benchmarks.speed.sweep_pruning                       # SmolLM2-135M, 3 x 3 grid, about 30 minutes
    python -m benchmarks.speed.sweep_pruning --model tiny --steps 8    # plumbing check, about 3 minutes

Both searches run through `python -m sft_lab.sweep`, one after the other, each in a fresh runs folder
(nothing is reused between them). The grid trains every point to the end; the search samples lr
log-uniformly over the grid's range and lora.r from the grid's ranks, and its pruner stops trials on
the held-out loss (on --prune-examples items) every --prune-every steps. The objective is the
held-out bits per byte (lm-eval, the final model, all --heldout items). Compute is training steps
and wall time. "Within the CI" means the search's best held-out bits per byte is at most the upper
end of the 95% bootstrap interval (over held-out items) of the grid's best. Prints a table and one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT  # noqa: E402
LN2 = math.log(2)


def run_sweep(name: str, spec: dict, args, folder: Path) -> tuple[list[dict], float]:
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(json.dumps({"study_name": name, **spec}))
    overrides = [f"model={args.model}", "tracking=none", "data=alpaca", f"data.examples={args.examples}",
                 f"data.heldout_max={args.heldout}", f"train.max_steps={args.steps}",
                 f"train.batch_size={args.batch_size}", f"train.max_length={args.max_length}",
                 "eval.tasks=[heldout]", f"paths.runs_dir={folder / 'runs'}"]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "sft_lab.sweep", str(folder / "sweep.yaml"), *overrides], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"sweep {name} failed:\n{out.stderr[-3000:]}")
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in (folder / "runs").glob("*/record.json")]
    return records, wall


def item_bits(run_dir: Path) -> dict[int, tuple[float, int]]:
    """doc_id -> (log-likelihood, bytes) of each held-out answer, from the run's per-item samples."""
    rows = [json.loads(line) for line in (run_dir / "samples" / "heldout.jsonl").read_text().splitlines()]
    return {row["doc_id"]: tuple(row["bits_per_byte"]) for row in rows}


def bootstrap_ci(items: dict[int, tuple[float, int]], iters: int = 5000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the held-out bits per byte, resampling held-out items."""
    ids = np.array(sorted(items))
    ll = np.array([items[i][0] for i in ids])
    nbytes = np.array([items[i][1] for i in ids])
    idx = np.random.default_rng(seed).integers(0, len(ids), size=(iters, len(ids)))
    samples = -ll[idx].sum(axis=1) / nbytes[idx].sum(axis=1) / LN2
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def summarise(records: list[dict], wall: float) -> dict:
    finished = [r for r in records if r["status"] == "finished"]
    best = min(finished, key=lambda r: r["eval"]["heldout"]["bits_per_byte"]["value"])
    return {
        "wall_s": round(wall, 1), "trials": len(records),
        "pruned": sum(r["status"] == "pruned" for r in records),
        "train_steps": sum(r["train"]["steps"] for r in records if r.get("train")),
        "best_bpb": round(best["eval"]["heldout"]["bits_per_byte"]["value"], 4),
        "best": {"lr": best["config"]["lr"], "lora.r": best["config"]["lora"]["r"]},
        "_items": item_bits(Path(best["run_dir"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--lrs", default="1e-4,5e-4,2e-3", help="the grid's learning rates")
    parser.add_argument("--ranks", default="4,16,64", help="the grid's LoRA ranks")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--prune-every", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--heldout", type=int, default=64, help="held-out items per run")
    parser.add_argument("--prune-examples", type=int, default=32, help="held-out items in each pruning loss")
    parser.add_argument("--pruner", default="successive_halving", choices=["successive_halving", "hyperband", "median"])
    args = parser.parse_args()

    lrs = [float(x) for x in args.lrs.split(",")]
    ranks = [int(x) for x in args.ranks.split(",")]
    n = len(lrs) * len(ranks)
    objective = {"metrics": ["heldout.bits_per_byte"], "direction": "minimize"}
    grid = {"sampler": {"type": "grid", "seed": 0}, "pruner": {"type": "none"}, "objective": objective,
            "space": {"lr": {"type": "categorical", "choices": lrs},
                      "lora.r": {"type": "categorical", "choices": ranks}}, "n_trials": n}
    pruner = {"type": args.pruner}
    if args.pruner == "successive_halving":
        pruner.update(min_resource=args.prune_every, reduction_factor=3)
    elif args.pruner == "median":
        pruner.update(n_startup_trials=2, n_warmup_steps=args.prune_every)
    search = {"sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 3}, "pruner": pruner,
              "prune_every": args.prune_every, "prune_examples": args.prune_examples, "objective": objective,
              "space": {"lr": {"type": "float", "low": min(lrs), "high": max(lrs), "log": True},
                        "lora.r": {"type": "categorical", "choices": ranks}}, "n_trials": n}
    with tempfile.TemporaryDirectory() as tmp:
        g = summarise(*run_sweep("grid", grid, args, Path(tmp) / "grid"))
        s = summarise(*run_sweep("search", search, args, Path(tmp) / "search"))
    lo, hi = bootstrap_ci(g.pop("_items"))
    s.pop("_items")
    within = s["best_bpb"] <= hi
    step_fraction = s["train_steps"] / g["train_steps"]
    wall_fraction = s["wall_s"] / g["wall_s"]
    print(f"{args.model}, lr {lrs} x lora.r {ranks}, {n} trials each, {args.steps} steps of batch {args.batch_size}, "
          f"max length {args.max_length}; objective held-out bits per byte ({args.heldout} items)")
    print("| search | trials | pruned | train steps | wall s | best held-out bpb | best config |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("full grid", g), (f"TPE + {args.pruner} pruning", s)):
        print(f"| {name} | {r['trials']} | {r['pruned']} | {r['train_steps']} | {r['wall_s']} | {r['best_bpb']} | {r['best']} |")
    print(f"grid best 95% CI [{lo:.4f}, {hi:.4f}]; search best {'within' if within else 'NOT within'} it; "
          f"compute {step_fraction:.0%} of the grid's training steps, {wall_fraction:.0%} of its wall time")
    print(json.dumps({"benchmark": "sweep_pruning", "model": args.model, "pruner": args.pruner, "grid": g, "search": s,
                      "grid_best_ci": [round(lo, 4), round(hi, 4)], "search_best_within_ci": within,
                      "step_fraction": round(step_fraction, 3), "wall_fraction": round(wall_fraction, 3),
                      "target_met": within and step_fraction <= 0.5 and wall_fraction <= 0.5}))


if __name__ == "__main__":
    main()
