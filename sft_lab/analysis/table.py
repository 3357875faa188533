"""Ablation table: rows are factor levels, columns are eval tasks, cells are mean ± 95% CI over seeds.

Significance is a paired bootstrap over the eval items against a reference row, Holm-corrected
across the table. Runs with different eval protocols are refused unless explicitly allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from sft_lab.analysis.collect import load_items
from sft_lab.analysis.stats import holm, paired_bootstrap, t_interval

LOWER_IS_BETTER = {"loss", "bits_per_byte", "perplexity"}
METRIC_ORDER = {"heldout": ["loss", "bits_per_byte"]}
DEFAULT_ORDER = ["acc", "acc_norm", "loss", "bits_per_byte"]
NOT_FACTORS = ("paths.", "tracking.", "force", "eval.", "status", "run_dir", "fingerprint", "protocol", "train.tokens_seen",
               "train.wall_s", "baseline")


class TableError(ValueError):
    pass


@dataclass
class Cell:
    mean: float = math.nan
    half: Optional[float] = None  # CI half-width (t over seeds; 1.96 x lm-eval stderr for one seed)
    n: int = 0
    from_stderr: bool = False
    delta: Optional[float] = None  # vs the base model
    p: Optional[float] = None  # Holm-adjusted, vs the reference row
    best: bool = False


@dataclass
class Row:
    labels: tuple
    cells: dict[str, Cell]
    cost: str = ""
    is_base: bool = False
    is_ref: bool = False
    runs: list[str] = field(default_factory=list)


@dataclass
class Table:
    row_keys: list[str]
    columns: list[str]  # "task/metric", then "Average"
    rows: list[Row]
    legend: list[str]


def pick_metric(df: pd.DataFrame, task: str, metric: Optional[str]) -> Optional[str]:
    have = [c.split("/")[2] for c in df.columns if c.startswith(f"eval/{task}/")]
    if metric and metric in have:
        return metric
    for m in METRIC_ORDER.get(task, DEFAULT_ORDER):
        if m in have:
            return m
    return have[0] if have else None


def higher_is_better(column: str) -> bool:
    return column.split("/")[-1] not in LOWER_IS_BETTER


def check_protocols(df: pd.DataFrame, tasks: list[str]) -> list[str]:
    """Names each protocol field that differs between runs; empty when all agree."""
    def view(p: str) -> dict:
        p = json.loads(p)
        return {"limit": p.get("limit"), "apply_chat_template": p.get("apply_chat_template"),
                **{f"n_shot[{t}]": (p.get("n_shot") or {}).get(t) for t in tasks},
                **{f"version[{t}]": (p.get("task_versions") or {}).get(t) for t in tasks}}

    views = [view(p) for p in df["protocol"]]
    return [f"{k}: {sorted({json.dumps(v.get(k)) for v in views})}" for k in views[0]
            if len({json.dumps(v.get(k)) for v in views}) > 1] if views else []


def pooled_factors(df: pd.DataFrame, rows: list[str], seeds: str) -> list[str]:
    """Config keys that vary inside a row group (other than the seed): the row averages over them."""
    keys = [c for c in df.columns if not c.startswith(NOT_FACTORS) and c not in rows and c != seeds
            and not c.startswith(("eval/", "stderr/"))]
    pooled = []
    for k in keys:
        if df.groupby(rows, dropna=False)[k].nunique(dropna=False).max() > 1:
            pooled.append(k)
    return pooled


def _items(run_dirs: list[str], task: str, metric: str) -> dict[Any, float]:
    """Per-item results averaged over a row's runs (its seeds)."""
    per_run = [load_items(d, task, metric) for d in run_dirs if d]
    per_run = [r for r in per_run if r]
    if not per_run:
        return {}
    common = set.intersection(*(set(r) for r in per_run))
    return {doc: sum(r[doc] for r in per_run) / len(per_run) for doc in common}


def build(df: pd.DataFrame, rows: list[str], metric: Optional[str] = None, ref: Optional[dict[str, str]] = None,
          base: Optional[pd.DataFrame] = None, allow_mixed: bool = False, seeds: str = "seed",
          excluded: Optional[dict] = None) -> Table:
    runs = df[~df["baseline"]] if "baseline" in df else df
    if runs.empty:
        raise TableError("no finished runs to tabulate")
    missing = [k for k in rows if k not in runs.columns]
    if missing:
        raise TableError(f"--rows: unknown key(s) {missing}; try config keys such as data, template, lr, lora.r, seed")
    tasks = sorted({c.split("/")[1] for c in runs.columns if c.startswith("eval/")})
    tasks = [t for t in tasks if runs[[c for c in runs.columns if c.startswith(f"eval/{t}/")]].notna().any(axis=1).all()]
    columns = [f"{t}/{pick_metric(runs, t, metric)}" for t in tasks]
    legend: list[str] = []
    both = pd.concat([runs, base]) if base is not None and not base.empty else runs
    diffs = check_protocols(both, [t for t in tasks if base is None or t != "heldout"])
    if diffs:
        if not allow_mixed:
            raise TableError("runs differ in eval protocol, so their numbers are not comparable: " + "; ".join(diffs)
                             + ". Filter them apart (--filter) or pass --allow-mixed-protocols.")
        legend.append("WARNING: mixed eval protocols (" + "; ".join(diffs) + ").")
    acc_columns = [c for c in columns if higher_is_better(c)]

    def make_row(labels, group: pd.DataFrame, is_base=False) -> Row:
        cells = {}
        for col in columns:
            key = f"eval/{col}"
            vals = group[key].dropna().tolist() if key in group else []
            mean, half, n = t_interval(vals)
            from_stderr = False
            if n == 1:
                se = group[f"stderr/{col}"].iloc[0] if f"stderr/{col}" in group else None
                if se is not None and not pd.isna(se):
                    half, from_stderr = 1.96 * float(se), True
            cells[col] = Cell(mean, half, n, from_stderr)
        if acc_columns:
            per_run = group[[f"eval/{c}" for c in acc_columns]].mean(axis=1, skipna=False).dropna().tolist()
            mean, half, n = t_interval(per_run)
            cells["Average"] = Cell(mean, half, n)
        tokens, wall = group["train.tokens_seen"].mean(), group["train.wall_s"].mean()
        cost = "" if is_base or pd.isna(tokens) else f"{tokens / 1e3:.1f}k tok, {wall:.0f} s"
        return Row(labels, cells, cost, is_base, runs=group["run_dir"].tolist())

    table_rows = []
    if base is not None and not base.empty:
        table_rows.append(make_row(("base model",) + ("",) * (len(rows) - 1), base, is_base=True))
    for labels, group in runs.groupby(rows, dropna=False, sort=True):
        labels = labels if isinstance(labels, tuple) else (labels,)
        row = make_row(labels, group)
        row.is_ref = bool(ref) and all(str(group[k].iloc[0]) == v for k, v in ref.items())
        table_rows.append(row)
    all_columns = columns + (["Average"] if acc_columns else [])

    base_row = next((r for r in table_rows if r.is_base), None)
    if base_row:
        for row in table_rows:
            for col, cell in row.cells.items():
                b = base_row.cells.get(col)
                if not row.is_base and b and not math.isnan(b.mean):
                    cell.delta = cell.mean - b.mean
        legend.append("Δ: difference from the base model (first row), evaluated with the same protocol.")
    if ref:
        _significance(table_rows, columns, ref, legend)
    for col in all_columns:
        cand = [r.cells[col] for r in table_rows if not r.is_base and col in r.cells and not math.isnan(r.cells[col].mean)]
        if cand:
            best = (max if higher_is_better(col) else min)(c.mean for c in cand)
            for c in cand:
                c.best = c.mean == best
    legend.insert(0, "Cells: mean ± 95% CI half-width over seeds (t-interval, n runs); n=1 uses 1.96 × lm-eval's "
                     "stderr (marked se). Best per column in bold." + (" Average: mean of the accuracy columns per run."
                                                                        if acc_columns else ""))
    pooled = pooled_factors(runs, rows, seeds)
    if pooled:
        legend.append("Rows pool over: " + ", ".join(pooled[:6]) + ("…" if len(pooled) > 6 else ""))
    if excluded:
        legend.append("Excluded: " + ", ".join(f"{n} {s}" for s, n in sorted(excluded.items())) + " run(s).")
    return Table(list(rows), all_columns, table_rows, legend)


def _significance(table_rows: list[Row], columns: list[str], ref: dict[str, str], legend: list[str]) -> None:
    ref_rows = [r for r in table_rows if r.is_ref]
    if len(ref_rows) != 1:
        raise TableError(f"--ref {ref} matches {len(ref_rows)} rows; it must match exactly one")
    ref_row = ref_rows[0]
    tests = []
    for row in table_rows:
        if row.is_ref or row.is_base:
            continue
        for col in columns:
            task, metric = col.split("/")
            a, b = _items(row.runs, task, metric), _items(ref_row.runs, task, metric)
            common = sorted(set(a) & set(b), key=str)
            if len(common) >= 2:
                tests.append((row, col, paired_bootstrap([a[d] for d in common], [b[d] for d in common])))
    for (row, col, _), adj in zip(tests, holm([p for *_, p in tests])):
        row.cells[col].p = adj
    legend.append(f"†: differs from the reference row ({', '.join(f'{k}={v}' for k, v in ref.items())}) at p < 0.05, "
                  f"paired bootstrap over eval items (10,000 resamples, per-item results averaged over seeds), "
                  f"Holm-corrected across the {len(tests)} tests in this table (cells with per-item results).")


# ---------------------------------------------------------------- rendering


def _fmt(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.3f}"


def cell_text(c: Cell, bold=("**", "**"), dagger="†") -> str:
    if c.n == 0:
        return "–"
    text = _fmt(c.mean) + (f" ± {c.half:.3f}" if c.half is not None else "")
    text = f"{bold[0]}{text}{bold[1]}" if c.best else text
    text += f" (n={c.n}{', se' if c.from_stderr else ''}"
    text += f", Δ {c.delta:+.3f})" if c.delta is not None else ")"
    if c.p is not None and c.p < 0.05:
        text += dagger
    return text


def to_markdown(t: Table) -> str:
    header = t.row_keys + t.columns + ["cost"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in t.rows:
        label = [(f"*{x}*" if x != "" else "") if r.is_base else str(x) + (" (ref)" if r.is_ref and i == 0 else "")
                 for i, x in enumerate(r.labels)]
        lines.append("| " + " | ".join(label + [cell_text(r.cells[c]) if c in r.cells else "–" for c in t.columns]
                                        + [r.cost]) + " |")
    return "\n".join(lines + [""] + [f"- {line}" for line in t.legend]) + "\n"


def to_csv(t: Table) -> str:
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(t.row_keys + [f"{c}{s}" for c in t.columns for s in ("", "_ci", "_n", "_delta", "_p_holm")] + ["cost"])
    for r in t.rows:
        vals = []
        for c in t.columns:
            cell = r.cells.get(c, Cell())
            vals += [cell.mean, cell.half, cell.n, cell.delta, cell.p]
        w.writerow(list(r.labels) + vals + [r.cost])
    return out.getvalue()


def to_latex(t: Table) -> str:
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    lines = [r"\begin{tabular}{" + "l" * len(t.row_keys) + "r" * len(t.columns) + "r}", r"\toprule",
             " & ".join(esc(x) for x in t.row_keys + t.columns + ["cost"]) + r" \\", r"\midrule"]
    for r in t.rows:
        cells = [cell_text(r.cells[c], bold=(r"\textbf{", "}"), dagger=r"$^\dagger$").replace("±", r"$\pm$")
                 .replace("Δ", r"$\Delta$").replace("–", "--") if c in r.cells else "--" for c in t.columns]
        lines.append(" & ".join([esc(x) for x in r.labels] + cells + [esc(r.cost)]) + r" \\")
        if r.is_base:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", ""] + [f"% {esc(line)}" for line in t.legend]
    return "\n".join(lines) + "\n"


def to_html(t: Table) -> str:
    import html

    head = "".join(f"<th>{html.escape(str(x))}</th>" for x in t.row_keys + t.columns + ["cost"])
    body = []
    for r in t.rows:
        cells = [html.escape(str(x)) for x in r.labels] + [
            cell_text(r.cells[c], bold=("<b>", "</b>")) if c in r.cells else "–" for c in t.columns] + [r.cost]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    legend = "".join(f"<li>{html.escape(line)}</li>" for line in t.legend)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + f"\n</tbody>\n</table>\n<ul>{legend}</ul>\n"


RENDERERS = {"md": to_markdown, "csv": to_csv, "latex": to_latex, "html": to_html}
