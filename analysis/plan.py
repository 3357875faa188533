#!/usr/bin/env python
"""How many seeds and eval items does it take to detect an effect? Estimated from pilot runs.

    python analysis/plan.py runs/ --metric arc_easy/acc --effect 0.01
    python analysis/plan.py runs/ --metric heldout/bits_per_byte --effect 0.005 --power 0.9

The pilot needs at least one config with two or more seeds (per-item results in samples/). With
several configs, the item-by-config interaction is estimated too; with one it is taken as 0, so
the answer is a lower bound. The power is that of the table's own test: against the base model
(--against base, the default) or another trained row (--against row), the seed variance pooled over
--rows trained rows, at Holm's first step over --tests tests (the whole table's family; it assumes the
effect is the only real difference). Prints the variance components, a power grid (seeds x items),
the fewest seeds per item count, then one JSON line.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sft_lab.analysis.collect import collect  # noqa: E402
from sft_lab.analysis.plan import Table, estimate, plan  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(prog="analysis/plan.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir", help="folder of pilot runs (record.json + samples/)")
    p.add_argument("--metric", required=True, help="TASK/METRIC, e.g. arc_easy/acc or heldout/bits_per_byte")
    p.add_argument("--effect", type=float, required=True, help="the true difference to detect, in the metric's units")
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seeds", default="seed", help="the key whose values are replicates (default: seed)")
    p.add_argument("--against", choices=["base", "row"], default="base",
                   help="what the table tests against: the base model (--ref base) or a trained row (--ref KEY=VALUE)")
    p.add_argument("--rows", type=int, default=2, help="trained rows in the planned table (their seed variance is pooled)")
    p.add_argument("--tests", type=int, default=1,
                   help="tests in the planned table (rows x columns): Holm's family size; 1 = no correction")
    args = p.parse_args()
    if args.effect == 0 or not 0 < args.power < 1 or args.rows < 1 or args.tests < 1:
        print("error: --effect must be non-zero, --power in (0, 1), --rows and --tests at least 1", file=sys.stderr)
        return 2
    df, _ = collect(args.runs_dir)
    if df.empty:
        print(f"error: no finished runs in {args.runs_dir}", file=sys.stderr)
        return 2
    try:
        pilot = estimate(df, args.metric, args.seeds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = Table(args.against == "base", args.rows, args.tests)
    result = plan(pilot, args.effect, args.power, table=table, alpha=args.alpha)
    print(f"Pilot: {pilot.runs} runs in {pilot.configs} config(s), {pilot.items} items of {args.metric}")
    print(f"  seed SD (run mean, beyond item noise) {pilot.seed ** 0.5:.4f}; seed x item noise SD {pilot.residual ** 0.5:.4f}; "
          f"item x config SD {pilot.interaction ** 0.5:.4f}" + ("" if pilot.configs > 1 else " (one config: taken as 0)"))
    print(f"\nPower of the table's test to detect a difference of {args.effect:g} against "
          + ("the base model" if table.against_base else "a trained row")
          + f" (two-sided, alpha {args.alpha}" + (f", Holm over {table.tests} tests" if table.tests > 1 else "")
          + f"; seed variance pooled over {table.rows} row(s)), seeds per row x items:\n")
    print("| seeds | " + " | ".join(f"{k} items" for k in result["items"]) + " |")
    print("|---|" + "---|" * len(result["items"]))
    for n in result["seeds"]:
        print(f"| {n} | " + " | ".join(f"{result['grid'][n][k]:.2f}" for k in result["items"]) + " |")
    print()
    for k, n in result["fewest_seeds"].items():
        print(f"{k:>6} items: " + (f"{n} seeds per arm reach {args.power:.0%} power" if n else
                                   f"more than {result['seeds'][-1]} seeds per arm needed"))
    print(json.dumps({"metric": args.metric, "effect": args.effect, "power": args.power, "pilot": pilot.__dict__,
                      "table": table.__dict__,
                      "fewest_seeds": {str(k): v for k, v in result["fewest_seeds"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
