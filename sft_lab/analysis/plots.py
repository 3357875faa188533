"""Figures for ablation tables (matplotlib): every axis labelled, a legend, 95% CIs wherever there are seeds.

Each function saves to `out` (.png or .svg, by its suffix) and returns the Figure, so tests can read
its artists. Values are Δ from the base model when the table has a base row, else the means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from sft_lab.analysis.table import ALPHA, Cell, Row, Table, higher_is_better
from sft_lab.tasks import is_heldout

BLUE, GREY = "#4477aa", "#999999"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "sft-lab"  # the same SVG from the same numbers
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, and the DOM holds the labels
    return plt


def _save(fig, out: str):
    plt = _plt()
    fig.tight_layout()
    fig.savefig(out, dpi=150, metadata={"Date": None} if str(out).endswith(".svg") else None)
    plt.close(fig)
    return fig


def row_label(r: Row) -> str:
    return "base model" if r.is_base else " / ".join(str(x) for x in r.labels if x != "")


def _value(c: Cell, has_base: bool) -> float:
    return (c.delta if c.delta is not None else math.nan) if has_base else c.mean


def _marked(c: Cell) -> bool:
    return c.p is not None and c.p < ALPHA


def _column_title(col: str) -> str:
    task, _, metric = col.partition("/")
    return col if not metric else f"{task} ({metric.replace('_', ' ')})"


def heatmap(table: Table, out: str, columns: Optional[list[str]] = None):
    """One row key: rows × columns (e.g. train data × held-out set). Two row keys: key 1 × key 2 on one column."""
    if len(table.row_keys) not in (1, 2):
        raise ValueError(f"--plot heatmap needs one or two --rows keys, got {len(table.row_keys)}")
    rows = [r for r in table.rows if not r.is_base]
    has_base = any(r.is_base for r in table.rows)
    if len(table.row_keys) == 2:
        col = (columns or ["Average" if "Average" in table.columns else table.columns[0]])[0]
        xs = sorted({r.labels[0] for r in rows}, key=_sort_key)
        ys = sorted({r.labels[1] for r in rows}, key=_sort_key)
        cells = [[None] * len(xs) for _ in ys]
        for r in rows:
            cells[ys.index(r.labels[1])][xs.index(r.labels[0])] = r.cells.get(col)
        xlabels, ylabels = [str(x) for x in xs], [str(y) for y in ys]
        xname, yname, what = table.row_keys[0], table.row_keys[1], _column_title(col)
    else:
        cols = columns or [c for c in table.columns if c != "Average"]
        cells = [[r.cells.get(c) for c in cols] for r in rows]
        xlabels, ylabels = [_column_title(c).replace(" (", "\n(") for c in cols], [row_label(r) for r in rows]
        metrics = {c.rpartition("/")[2] for c in cols}
        xname, yname = "eval column", table.row_keys[0]
        what = metrics.pop().replace("_", " ") if len(metrics) == 1 else "the column's metric"
    grid = [[_value(c, has_base) if c else math.nan for c in line] for line in cells]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.5 * len(xlabels) + 2.5, 0.55 * len(ylabels) + 2))
    finite = [abs(v) for line in grid for v in line if not math.isnan(v)]
    if has_base:  # diverging around no change
        span = max(finite) if finite else 1.0
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-span, vmax=span, aspect="auto")
    else:
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels, fontsize=8)
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_xlabel(xname)
    ax.set_ylabel(yname)
    for i, line in enumerate(cells):
        for j, c in enumerate(line):
            if c is not None and not math.isnan(grid[i][j]):
                text = f"{grid[i][j]:+.3f}" if has_base else f"{grid[i][j]:.3f}"
                text += "†" if _marked(c) else ""
                half = c.delta_half if has_base else c.half
                text += f"\n±{half:.3f}" if half is not None else ""
                strong = abs(grid[i][j]) > 0.6 * max(finite) if has_base else grid[i][j] < min(finite) + 0.4 * (
                    max(finite) - min(finite))  # dark cells get white text
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if strong else "black")
    label = f"Δ {what} vs base model" if has_base else what
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(f"{label}" + (" (Δ ± 95% CI)" if has_base else " (mean ± 95% CI)") + (f"; † p < {ALPHA} (Holm)" if any(
        _marked(c) for line in cells for c in line if c) else ""), fontsize=9)
    return _save(fig, out)


def bars(table: Table, out: str, columns: Optional[list[str]] = None):
    """Grouped bars: one group per column, one bar per row (legend), 95% CI whiskers where there is a CI."""
    cols = columns or [c for c in table.columns if not is_heldout(c.split("/")[0])] or table.columns
    plt = _plt()
    n = len(table.rows)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(cols) * max(1, n / 3)), 4))
    colours = plt.get_cmap("tab10")
    no_ci = False
    for i, r in enumerate(table.rows):
        means = [r.cells[c].mean if c in r.cells else math.nan for c in cols]
        halves = [r.cells[c].half if c in r.cells else None for c in cols]
        no_ci |= any(h is None for h, m in zip(halves, means) if not math.isnan(m))
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(cols))]
        ax.bar(xs, means, width, yerr=[h if h is not None else 0 for h in halves], capsize=3,
               color=GREY if r.is_base else colours(i % 10), label=row_label(r) + (" (ref)" if r.is_ref else ""),
               error_kw={"elinewidth": 1})
        for x, c in zip(xs, cols):
            if c in r.cells and _marked(r.cells[c]):
                ax.text(x, r.cells[c].mean + (r.cells[c].half or 0), "†", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(cols)), [_column_title(c).replace(" (", "\n(") for c in cols], fontsize=8)
    ax.set_xlabel("eval column")
    ax.set_ylabel("score (higher is better)" if all(higher_is_better(c) for c in cols) else "value")
    ax.legend(title=" / ".join(table.row_keys), fontsize=7, title_fontsize=8, ncol=min(3, n))
    ax.set_title("mean ± 95% CI over seeds and items" + (" (rows without whiskers have no CI)" if no_ci else ""),
                 fontsize=9)
    return _save(fig, out)


@dataclass
class Point:
    label: str
    x: float
    x_half: Optional[float]
    y: float
    y_half: Optional[float]


def scatter(points: list[Point], out: str, xlabel: str, ylabel: str, title: str):
    """One labelled point per row, with 95% CI whiskers on both axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colours = plt.get_cmap("tab10")
    for i, p in enumerate(points):
        ax.errorbar(p.x, p.y, xerr=p.x_half, yerr=p.y_half, fmt="o", capsize=3, color=colours(i % 10), label=p.label)
        ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0, color=GREY, lw=0.8, ls="--")
    ax.axvline(0, color=GREY, lw=0.8, ls="--")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out)


def learning_vs_forgetting(table: Table, out: str):
    """The CLI's scatter: each row's held-out Δ (x) against its Average Δ on the benchmarks (y)."""
    held = next((c for c in table.columns if is_heldout(c.split("/")[0])), None)
    if held is None or "Average" not in table.columns:
        raise ValueError("--plot scatter needs runs with a held-out column and at least one benchmark accuracy")
    if not any(r.is_base for r in table.rows):
        raise ValueError("--plot scatter shows changes from the base model; drop --no-base")
    points = [Point(row_label(r), r.cells[held].delta, r.cells[held].delta_half, r.cells["Average"].delta,
                    r.cells["Average"].delta_half) for r in table.rows if not r.is_base
              and r.cells[held].delta is not None and r.cells["Average"].delta is not None]
    if not points:
        raise ValueError(f"--plot scatter: no row has a Δ on {held} and Average (its items differ from the base's)")
    return scatter(points, out, f"Δ {_column_title(held)} vs base (left: learnt more)",
                   "Δ mean benchmark accuracy vs base (down: forgot)", "learning vs forgetting, mean ± 95% CI")


def _sort_key(x):
    try:
        return (0, float(x))
    except (TypeError, ValueError):
        return (1, str(x))


def tuning_curves(curves, out: str, objective: str):
    """Expected best dev score against the number of trials, one line per arm (sft_lab.analysis.curves)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.get_cmap("tab10")
    for i, c in enumerate(x for x in curves if x.curve):
        ax.plot(range(1, len(c.curve) + 1), c.curve, "o-", color=colours(i % 10), label=f"{c.arm} ({len(c.values)} trials)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("tuning trials")
    ax.set_ylabel(f"expected best dev {objective}")
    ax.set_title("tuning curves: expected best of t trials (Dodge et al. 2019)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out)


def learning_curves(curves, out: str):
    """Each metric against answer tokens trained, one panel per metric, per arm: mean over seeds ± 95% CI."""
    plt = _plt()
    metrics = list(dict.fromkeys(c.metric for c in curves))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    colours = plt.get_cmap("tab10")
    arms = list(dict.fromkeys(c.arm for c in curves))
    for ax, metric in zip(axes[0], metrics):
        for c in (c for c in curves if c.metric == metric):
            half = [h if h is not None else 0.0 for h in c.half]
            ax.errorbar(c.tokens, c.mean, yerr=half, fmt="o-", capsize=3, color=colours(arms.index(c.arm) % 10),
                        label=f"{c.arm} (n={c.seeds})")
        ax.set_xlabel("answer tokens trained")
        ax.set_ylabel("held-out loss (per answer token)" if metric == "heldout/loss" else _column_title(metric))
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("learning curves: mean over seeds ± 95% CI", fontsize=9)
    return _save(fig, out)
