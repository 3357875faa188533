"""A/A calibration on the real model: SmolLM2-135M runs identical but for the seed.

Trains --seeds runs (LoRA r8 on Alpaca), evaluates ARC-Easy, PIQA and the held-out split, then splits
the runs at random into two arms many times (re-splits of one set of runs: one realisation), and into
disjoint 2-vs-2 comparisons (independent). Every difference is noise, so a test at level 0.05 should
flag about 5%. Prints both tests' rates, the between-seed SD and the item
disagreement rate per column, then one JSON line.

    python -m benchmarks.stats.aa_calibration                      # 8 seeds, about 30 min on 2 CPU cores
    python -m benchmarks.stats.aa_calibration --seeds 4 --steps 10 --limit 50 --runs-dir /tmp/aa   # a smoke run
Runs already finished in --runs-dir are reused (the pipeline skips them), so it resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import ROOT  # noqa: E402

from sft_lab.analysis.calibration import aa_independent, aa_rates  # noqa: E402
from sft_lab.analysis.collect import collect  # noqa: E402
from sft_lab.analysis.table import Items  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, default=150, help="items per benchmark")
    p.add_argument("--splits", type=int, default=200)
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "aa_calibration"))
    args = p.parse_args()
    start = time.time()
    overrides = ["-m", f"seed={','.join(map(str, range(args.seeds)))}", "model=smollm2_135m", "data=alpaca", "lora=r8",
                 f"lr={args.lr}", f"train.max_steps={args.steps}", "eval.tasks=[arc_easy,piqa,heldout]",
                 f"eval.limit={args.limit}", "tracking=none", f"paths.runs_dir={args.runs_dir}"]
    out = subprocess.run([sys.executable, "-m", "sft_lab.run", *overrides], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    if out.returncode != 0:
        return out.returncode
    df, _ = collect(args.runs_dir)
    df = df[~df["baseline"]]
    for key, value in (("lr", args.lr), ("train.max_steps", args.steps), ("eval.limit", args.limit)):
        df = df[df[key] == value]
    dirs = df.sort_values("seed")["run_dir"].tolist()[: args.seeds]
    columns = ["arc_easy/acc", "piqa/acc", "heldout/bits_per_byte"]
    items = Items()
    result = {"model": "SmolLM2-135M-Instruct", "lora_r": 8, "steps": args.steps, "lr": args.lr, "seeds": len(dirs)}
    for col in columns:
        keys = items.shared_keys(dirs, col)
        r = aa_rates(items.matrix(dirs, col, keys), splits=args.splits, per_arm=len(dirs) // 2)
        result[col] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
        result[col]["independent"] = aa_independent(items.matrix(dirs, col, keys), per_arm=2)
        print(f"{col:24s} new {r['rate_seeds_items']:.3f}  item-only {r['rate_item_only']:.3f}  "
              f"between-seed SD {r['between_seed_sd']:.4f}  item disagreement {r['item_disagreement']}  "
              f"independent 2-vs-2: {result[col]['independent']['flagged']} of {result[col]['independent']['tested']}")
    result["wall_s"] = round(time.time() - start)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
