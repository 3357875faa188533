"""Plots for ablation tables (matplotlib, written to a file)."""

from __future__ import annotations

import math

import pandas as pd

from sft_lab.analysis.table import Table


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(table: Table, column: str, out: str) -> None:
    """Two row keys (e.g. lr x lora.r) as a grid of the column's means."""
    if len(table.row_keys) != 2:
        raise ValueError("--plot heatmap needs exactly two --rows keys, e.g. --rows lr,lora.r")
    rows = [r for r in table.rows if not r.is_base]
    xs = sorted({r.labels[0] for r in rows}, key=_sort_key)
    ys = sorted({r.labels[1] for r in rows}, key=_sort_key)
    grid = [[math.nan] * len(xs) for _ in ys]
    for r in rows:
        grid[ys.index(r.labels[1])][xs.index(r.labels[0])] = r.cells[column].mean
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 2, 0.8 * len(ys) + 1.5))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_xlabel(table.row_keys[0])
    ax.set_ylabel(table.row_keys[1])
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label=column)
    ax.set_title(f"{column} by {table.row_keys[0]} x {table.row_keys[1]}")
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)


def bars(table: Table, column: str, out: str) -> None:
    """One bar per row with its 95% CI."""
    plt = _plt()
    labels = [" / ".join(str(x) for x in r.labels if x != "") for r in table.rows]
    means = [r.cells[column].mean if column in r.cells else math.nan for r in table.rows]
    errs = [r.cells[column].half or 0 if column in r.cells else 0 for r in table.rows]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(labels)), 3.5))
    ax.bar(range(len(labels)), means, yerr=errs, capsize=4,
           color=["#999999" if r.is_base else "#4477aa" for r in table.rows])
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(column)
    ax.set_title(f"{column} (mean ± 95% CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)


def learning_vs_forgetting(df: pd.DataFrame, out: str) -> None:
    """Held-out loss (learning) against the mean benchmark accuracy (forgetting), one point per run."""
    acc_cols = [c for c in df.columns if c.startswith("eval/") and c.endswith("/acc") and "/heldout/" not in c]
    if "eval/heldout/loss" not in df or not acc_cols:
        raise ValueError("--plot scatter needs runs with a held-out loss and at least one benchmark accuracy")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    runs = df[~df["baseline"]]
    ax.scatter(runs["eval/heldout/loss"], runs[acc_cols].mean(axis=1), color="#4477aa")
    ax.set_xlabel("held-out loss (lower: learnt more)")
    ax.set_ylabel("mean benchmark accuracy (lower: forgot more)")
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)


def _sort_key(x):
    try:
        return (0, float(x))
    except (TypeError, ValueError):
        return (1, str(x))
