#!/usr/bin/env python
"""Main effects: each factor's levels averaged over the other factors, with 95% CIs.

    python analysis/main_effects.py runs/ --factors lr,lora.r --metric arc_easy/acc
    python analysis/main_effects.py runs/ --factors lr,lora.r --study lr_rank --storage sqlite:///runs/optuna.db
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sft_lab.analysis.collect import collect  # noqa: E402
from sft_lab.analysis.effects import main_effects  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir")
    p.add_argument("--factors", required=True, help="comma-separated factor keys, e.g. lr,lora.r,data")
    p.add_argument("--metric", default="heldout/loss", help="task/metric (default heldout/loss)")
    p.add_argument("--study", help="an Optuna study name: also print its parameter importances")
    p.add_argument("--storage", help="the study's storage URL")
    args = p.parse_args()
    df, _ = collect(args.runs_dir)
    if df.empty:
        print(f"error: no finished runs in {args.runs_dir}", file=sys.stderr)
        return 2
    try:
        effects = main_effects(df, args.factors.split(","), args.metric)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(effects.to_markdown(index=False, floatfmt=".4f"))
    if args.study:
        import optuna

        study = optuna.load_study(study_name=args.study, storage=args.storage)
        for k, v in optuna.importance.get_param_importances(study).items():
            print(f"importance {k}: {v:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
