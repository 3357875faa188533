"""A/A on independent real runs: finished runs of one config that differ only in the seed, in disjoint arms.

Runs sorted by seed go into arms of --per-arm (seeds 0,1 | 2,3 | ...); arm 1 is tested against arm 2,
arm 3 against arm 4, and so on, each run used once, with the tables' own test (stats.compare). Every
difference is noise, so about 5% of tests should be flagged. Prints one line per column (every column
with per-item results) and one JSON line.

    python -m benchmarks.stats.aa_independent runs/gen_study --filter data=alpaca
"""

from __future__ import annotations

import argparse
import json
import sys


from sft_lab.analysis.calibration import aa_independent  # noqa: E402
from sft_lab.analysis.cli import apply_filters  # noqa: E402
from sft_lab.analysis.collect import collect  # noqa: E402
from sft_lab.analysis.table import Items, task_columns  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir")
    p.add_argument("--filter", action="append", default=[], help="KEY=VALUE: the one config (repeatable)")
    p.add_argument("--per-arm", type=int, default=2)
    args = p.parse_args()
    df, _ = collect(args.runs_dir)
    df = apply_filters(df[~df["baseline"]], args.filter)
    dirs = df.sort_values("seed")["run_dir"].tolist()
    if len(dirs) < 2 * args.per_arm:
        print(f"error: {len(dirs)} run(s) match; two arms of {args.per_arm} need {2 * args.per_arm}", file=sys.stderr)
        return 2
    tasks = sorted({c.split("/")[1] for c in df.columns if c.startswith("eval/")})
    items = Items()
    out = {"runs": len(dirs), "seeds": sorted(df["seed"].tolist()), "per_arm": args.per_arm, "columns": {}}
    for col in [c for t in tasks for c in task_columns(df, t, None)]:
        keys = items.shared_keys(dirs, col)
        if not keys:
            continue
        r = aa_independent(items.matrix(dirs, col, keys), per_arm=args.per_arm)
        out["columns"][col] = {**r, "items": len(keys)}
        print(f"{col:40s} {len(keys):4d} items: {r['flagged']} of {r['tested']} tests flagged (p {r['p']})")
    tested = sum(c["tested"] for c in out["columns"].values())
    flagged = sum(c["flagged"] for c in out["columns"].values())
    out.update(tested=tested, flagged=flagged)
    print(f"all columns: {flagged} of {tested} tests flagged at p < 0.05 (before Holm)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
