"""python analysis/ablation_table.py RUNS_DIR --rows KEY[,KEY] [--cols eval|KEY] [--metric NAME]
[--ref KEY=VALUE] [--format md|csv|latex|html] [--out FILE] [--plot heatmap|bars|scatter] [--filter KEY=VALUE]..."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sft_lab.analysis import render
from sft_lab.analysis import table as tbl
from sft_lab.analysis.base import pairs, apply_filters, ensure_base
from sft_lab.analysis.collect import collect, collect_wandb
from sft_lab.errors import UserError
from sft_lab.tasks import is_heldout



def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="analysis/ablation_table.py", description=(
        "Ablation table from finished runs: mean ± 95%% CI over seeds and items, a base-model row per model, Δ ± its "
        "95%% CI against the † reference, and a t-test over seeds and items against --ref (Holm-corrected), refusing "
        "to mix eval protocols."), usage=__doc__)
    p.add_argument("runs_dir", nargs="?", help="folder of run folders (record.json)")
    p.add_argument("--rows", required=True, help="factor keys for the rows, e.g. data or lr,lora.r")
    p.add_argument("--cols", default="eval", help="eval (one column per task) or a factor key (its levels, on the Average)")
    p.add_argument("--metric", help="metric to show per task (default: acc, or loss for heldout)")
    p.add_argument("--ref", help="KEY=VALUE[,KEY=VALUE]: the reference row for † and Δ; base: each row's base model")
    p.add_argument("--seeds", default="seed", help="the key whose values are replicates (default: seed)")
    p.add_argument("--filter", action="append", default=[], help="KEY=VALUE; repeatable")
    p.add_argument("--format", default="md", choices=sorted(render.RENDERERS))
    p.add_argument("--out", help="write the table (or the plot, with --plot: .png or .svg) here instead of stdout")
    p.add_argument("--plot", choices=["heatmap", "bars", "scatter"], help=(
        "heatmap: one --rows key gives rows x eval columns, two give key1 x key2 on the Average; bars: every "
        "benchmark column, one bar per row; scatter: held-out change vs benchmark change from the base model"))
    p.add_argument("--no-base", action="store_true", help="skip the base-model row")
    p.add_argument("--allow-mixed-protocols", action="store_true")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead of a folder (online)")
    p.add_argument("--group", help="W&B group (with --wandb)")
    p.add_argument("--log-wandb", metavar="ENTITY/PROJECT", help="also log the table to W&B as a Table")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.wandb:
            df, excluded = collect_wandb(args.wandb, args.group)
        elif args.runs_dir:
            if not Path(args.runs_dir).is_dir():
                raise tbl.TableError(f"{args.runs_dir}: no such folder")
            df, excluded = collect(args.runs_dir)
        else:
            raise tbl.TableError("give a RUNS_DIR or --wandb ENTITY/PROJECT")
        if df.empty:
            raise tbl.TableError(f"no finished runs in {args.runs_dir or args.wandb}")
        df = apply_filters(df, args.filter)
        rows = [r.strip() for r in args.rows.split(",")]
        trained = df[~df["baseline"]]
        if not args.allow_mixed_protocols and not trained.empty and "protocol" in trained:
            diffs = tbl.protocol_differences(trained, rows)  # before any base model is evaluated
            if diffs:
                raise tbl.TableError(tbl.MIXED.format("; ".join(diffs)))
        base = None if args.no_base or args.wandb else ensure_base(df, args.runs_dir)
        runs = df[~df["baseline"]]
        if args.cols != "eval":
            runs = _pivot_runs(runs, args.cols)
        ref = "base" if args.ref == "base" else pairs(args.ref, "--ref") or None
        t = tbl.build(runs, rows, metric=args.metric, ref=ref, base=base,
                      allow_mixed=args.allow_mixed_protocols, seeds=args.seeds, excluded=dict(excluded))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.plot:
        from sft_lab.analysis import plots

        out = args.out or f"{args.plot}.png"
        try:
            {"heatmap": plots.heatmap, "bars": plots.bars, "scatter": plots.learning_vs_forgetting}[args.plot](t, out)
        except ValueError as e:
            print(f"error: --plot {args.plot}: {e}", file=sys.stderr)
            return 2
        print(f"wrote {out}", file=sys.stderr)
        return 0
    text = render.RENDERERS[args.format](t)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.log_wandb:
        _log_wandb(t, args.log_wandb, args.group)
    return 0


def _pivot_runs(runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """--cols KEY: one column per level of KEY, on each run's mean accuracy."""
    if key not in runs:
        raise tbl.TableError(f"--cols: unknown key {key!r}")
    acc = [c for c in runs.columns if c.startswith("eval/") and c.endswith("/acc") and not is_heldout(c.split("/")[1])]
    out = runs.drop(columns=[c for c in runs.columns if c.startswith(("eval/", "stderr/"))]).copy()
    for level in sorted(runs[key].dropna().unique(), key=str):
        out[f"eval/{key}={level}/acc"] = runs[acc].mean(axis=1).where(runs[key] == level)
    return out


def _log_wandb(t: tbl.Table, path: str, group: str | None) -> None:
    import wandb

    entity, _, project = path.rpartition("/")
    run = wandb.init(entity=entity or None, project=project, group=group, job_type="ablation_table")
    run.log({"ablation_table": wandb.Table(columns=t.row_keys + t.columns, data=[
        list(r.labels) + [render.cell_text(r.cells[c], bold=("", "")) if c in r.cells else "" for c in t.columns]
        for r in t.rows])})
    run.finish()
