"""Main effects: each factor's levels, averaged over every other factor, with 95% CIs."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from sft_lab.analysis.collect import collect

from sft_lab.analysis.stats import t_interval


def main_effects(df: pd.DataFrame, factors: list[str], column: str) -> pd.DataFrame:
    key = f"eval/{column}" if not column.startswith("eval/") else column
    if key not in df:
        raise ValueError(f"no runs report {column}; columns: {sorted(c[5:] for c in df if c.startswith('eval/'))}")
    rows = []
    runs = df[~df["baseline"]] if "baseline" in df else df
    for factor in factors:
        if factor not in runs:
            raise ValueError(f"unknown factor {factor!r}")
        for level, group in runs.groupby(factor, dropna=False):
            mean, half, n = t_interval(group[key].dropna().tolist())
            rows.append({"factor": factor, "level": level, "mean": mean, "ci95": half, "n": n})
    return pd.DataFrame(rows)


CLI_DOC = """Main effects: each factor's levels averaged over the other factors, with 95% CIs.

    sft-lab-effects runs/ --factors lr,lora.r --metric arc_easy/acc
    sft-lab-effects runs/ --factors lr,lora.r --study lr_rank --storage sqlite:///runs/optuna.db
"""


def main() -> int:
    p = argparse.ArgumentParser(prog="sft-lab-effects", description=CLI_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
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

