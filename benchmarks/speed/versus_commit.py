"""One `python -m sft_lab.run` command, run by this tree and by an earlier commit, side by side.

    python -m benchmarks.speed.versus_commit REV [--rounds 2] -- OVERRIDES...
    python -m benchmarks.speed.versus_commit 6aa6446~1 -- model=tiny tracking=none data.examples=64 \\
        train.max_steps=4 'eval.tasks=[arc_easy,piqa]' eval.limit=200
    python -m benchmarks.speed.versus_commit 383033a --rounds 1 -- -m data=alpaca,dolly lr=1e-4,2e-4 \\
        train.max_steps=30 'eval.tasks=[arc_easy,piqa]' eval.limit=100 tracking=none     # the study's grid

REV is checked out into a temporary git worktree, which uses this environment's packages. The two sides
alternate between rounds; each run gets a fresh runs folder. Reports the wall time and peak RSS (the
whole process tree, sampled) of each, the eval values of each side's record, and the ratio of the
median wall times. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT  # noqa: E402
from benchmarks.common import timed  # noqa: E402


def run_once(tree: Path, overrides: list[str], runs: Path) -> tuple[float, int, dict]:
    """One command (a run, or a grid with -m); the eval values of each run, by run name."""
    wall, peak = timed([sys.executable, "-m", "sft_lab.run", *overrides, f"paths.runs_dir={runs}"], tree, tree)
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*/record.json"))]
    values = {r["name"]: {f"{t}/{m}": round(v["value"], 4) for t, ms in r["eval"].items() for m, v in ms.items()}
              for r in records}
    return wall, peak, next(iter(values.values())) if len(values) == 1 else values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the earlier commit (any git revision)")
    parser.add_argument("--rounds", type=int, default=2)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]  # the run's overrides
    commit = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / f"sft-lab-{commit}"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            sides = {"this tree": ROOT, commit: old_tree}
            results: dict[str, list] = {name: [] for name in sides}
            for r in range(args.rounds):
                for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                    wall, peak, values = run_once(sides[name], args.overrides, Path(tmp) / f"runs-{r}-{len(results[name])}-{name.replace(' ', '_')}")
                    results[name].append({"wall_s": round(wall, 1), "peak_rss_mb": peak, "eval": values})
                    print(f"round {r} {name}: {wall:.1f} s, peak RSS {peak} MB", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    median = {n: statistics.median(x["wall_s"] for x in rs) for n, rs in results.items()}
    peak = {n: max(x["peak_rss_mb"] for x in rs) for n, rs in results.items()}
    print(f"python -m sft_lab.run {' '.join(args.overrides)}; {args.rounds} rounds, alternating")
    print("| side | wall s (median) | peak RSS MB |")
    print("|---|---|---|")
    for name in results:
        print(f"| {name} | {median[name]:.1f} | {peak[name]} |")
    for name, rs in results.items():
        print(f"  {name} eval: {rs[-1]['eval']}", file=sys.stderr)
    print(json.dumps({"benchmark": "versus_commit", "rev": commit, "overrides": args.overrides, "sides": results,
                      "speedup": round(median[commit] / median["this tree"], 2),
                      "rss_ratio": round(peak[commit] / peak["this tree"], 2)}))


if __name__ == "__main__":
    main()
