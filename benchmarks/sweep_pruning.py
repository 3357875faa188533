"""A pruned sweep against the same grid unpruned: wall time, training steps and the best config.

    python benchmarks/sweep_pruning.py                 # tiny model (plumbing scale), about 4 minutes
    python benchmarks/sweep_pruning.py --model smollm2_135m --steps 40

Both sweeps run the same lr x lora.r grid through `python -m sft_lab.sweep`, one after the other, each
in a fresh runs folder (so nothing is reused between them). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_sweep(pruner: dict, args, folder: Path) -> dict:
    spec = {
        "study_name": "grid", "sampler": {"type": "grid"}, "pruner": pruner, "prune_every": args.prune_every,
        "space": {"lr": {"type": "categorical", "choices": [1e-5, 1e-4, 1e-3, 3e-3]},
                  "lora.r": {"type": "categorical", "choices": [4, 16]}},
        "objective": {"metrics": ["heldout.loss"], "direction": "minimize"}, "n_trials": 8,
    }
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(json.dumps(spec))
    overrides = [f"model={args.model}", "tracking=none", "data.examples=512", "data.heldout_max=32",
                 f"train.max_steps={args.steps}", "train.max_length=128", "eval.tasks=[heldout]",
                 f"paths.runs_dir={folder / 'runs'}"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sft_lab.sweep", str(folder / "sweep.yaml"), *overrides], cwd=ROOT,
                   check=True, capture_output=True)
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in (folder / "runs").glob("*/record.json")]
    best = min((r for r in records if r["status"] == "finished"), key=lambda r: r["eval"]["heldout"]["loss"]["value"])
    return {
        "wall_s": round(wall, 1), "trials": len(records), "pruned": sum(r["status"] == "pruned" for r in records),
        "train_steps": sum(r["train"]["steps"] for r in records),
        "best_heldout_loss": round(best["eval"]["heldout"]["loss"]["value"], 4),
        "best": {"lr": best["config"]["lr"], "lora.r": best["config"]["lora"]["r"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prune-every", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        unpruned = run_sweep({"type": "none"}, args, Path(tmp) / "unpruned")
        pruned = run_sweep({"type": "median", "n_startup_trials": 2, "n_warmup_steps": 5}, args, Path(tmp) / "pruned")
    print(f"| lr x lora.r grid, 8 trials, {args.model}, {args.steps} steps | wall s | train steps | pruned | best held-out loss | best |")
    print("|---|---|---|---|---|---|")
    for name, r in (("unpruned", unpruned), ("median pruner", pruned)):
        print(f"| {name} | {r['wall_s']} | {r['train_steps']} | {r['pruned']} | {r['best_heldout_loss']} | {r['best']} |")
    print(json.dumps({"benchmark": "sweep_pruning", "model": args.model, "unpruned": unpruned, "pruned": pruned,
                      "wall_ratio": round(pruned["wall_s"] / unpruned["wall_s"], 3),
                      "step_ratio": round(pruned["train_steps"] / unpruned["train_steps"], 3)}))


if __name__ == "__main__":
    main()
