"""The ablation table (sft_lab.analysis.table.Table) as markdown, CSV, LaTeX and HTML: one writer per format,
each from the table's cells, none from another's text."""

from __future__ import annotations

import math
from typing import Optional

from sft_lab.analysis.table import ALPHA, Cell, Table


def _fmt(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.3f}"


def cell_parts(c: Cell, dagger="†", untested="°") -> tuple[str, str]:
    """A cell as (its value ± CI, the rest: n, Δ and marks); the best value is set in bold by each writer."""
    if c.n == 0:
        return "–", ""
    value = _fmt(c.mean) + (f" ± {c.half:.3f}" if c.half is not None else "")
    basis = {"items": ", items only", "runs": ", runs only"}.get(c.basis, "")
    rest = f" (n={c.n}{': ' + c.pooled if c.pooled else ''}{basis}"
    if c.delta is not None:
        rest += f", Δ {c.delta:+.3f}" + (f" ± {c.delta_half:.3f}" if c.delta_half is not None else "")
    rest += ")"
    if c.p is not None and c.p < ALPHA:
        rest += dagger
    elif c.untested:
        rest += untested
    return value, rest


def cell_text(c: Cell, bold=("**", "**"), dagger="†", untested="°") -> str:
    value, rest = cell_parts(c, dagger, untested)
    return (f"{bold[0]}{value}{bold[1]}" if c.best and c.n else value) + rest


POWER_LABEL = "min. detectable Δ"


def _body(t: Table, bold=("**", "**"), dagger="†") -> list[list[str]]:
    """Label cells + value cells + cost, per row, then the power row."""
    out = []
    for r in t.rows:
        label = [(f"*{x}*" if x != "" else "") if r.is_base else str(x) + (" (ref)" if r.is_ref and i == 0 else "")
                 + (f" ‡ ({', '.join(r.same_as_base)})" if r.same_as_base and i == 0 else "")
                 for i, x in enumerate(r.labels)]
        out.append(label + [cell_text(r.cells[c], bold, dagger) if c in r.cells else "–" for c in t.columns]
                   + [r.cost])
    if t.power:
        out.append([POWER_LABEL] + [""] * (len(t.row_keys) - 1) + [t.power.get(c, "–") for c in t.columns] + [""])
    return out


def to_markdown(t: Table) -> str:
    header = t.row_keys + t.columns + ["cost"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _body(t)]
    return "\n".join(lines + [""] + [f"- {line}" for line in t.legend]) + "\n"


def to_csv(t: Table) -> str:
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(t.row_keys + [f"{c}{s}" for c in t.columns
                             for s in ("", "_ci", "_n", "_ci_basis", "_delta", "_delta_ci", "_p_holm", "_untested")]
               + ["cost"])
    for r in t.rows:
        vals = []
        for c in t.columns:
            cell = r.cells.get(c, Cell())
            vals += [cell.mean, cell.half, cell.n, cell.basis, cell.delta, cell.delta_half, cell.p, cell.untested]
        w.writerow(list(r.labels) + vals + [r.cost])
    return out.getvalue()


def to_latex(t: Table) -> str:
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{" + "l" * len(t.row_keys) + "r" * len(t.columns) + "r}", r"\toprule",
             " & ".join(esc(x) for x in t.row_keys + t.columns + ["cost"]) + r" \\", r"\midrule"]
    for r, row in zip(t.rows + [None], _body(t, bold=(r"\textbf{", "}"), dagger=r"$^\dagger$")):
        n = len(t.row_keys)
        cells = [esc(x.replace("*", "")) for x in row[:n]] + [
            x.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("–", "--").replace("°", r"$^\circ$")
            .replace("×", r"$\times$") for x in row[n:-1]] + [esc(row[-1])]
        if r is None:
            lines.append(r"\midrule")
        lines.append(" & ".join(cells) + r" \\")
        if r is not None and r.is_base:
            lines.append(r"\midrule")
    caption = " ".join(esc(x).replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("†", r"$^\dagger$")
                       .replace("°", r"$^\circ$").replace("α", r"$\alpha$").replace("×", r"$\times$")
                       .replace("–", "--") for x in t.legend)
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + caption + "}", r"\label{tab:ablation}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


TABLE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
table.ablation { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; margin: 1em 0; }
table.ablation th, table.ablation td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
table.ablation th { border-bottom: 2px solid #333; background: #f6f6f6; position: sticky; top: 0; }
table.ablation td.label, table.ablation th.label { text-align: left; }
table.ablation tr.base td { font-style: italic; background: #fafafa; }
table.ablation tr.power td { border-top: 2px solid #333; color: #555; font-size: 12px; }
table.ablation tr:hover td { background: #eef4fb; }
ul.legend { font-size: 12px; color: #444; max-width: 1100px; }
"""


def html_table(t: Table) -> str:
    """The table as an HTML fragment (class "ablation") with its legend; style it with TABLE_CSS."""
    import html

    def cell(c: Optional[Cell]) -> str:
        if c is None:
            return "–"
        value, rest = cell_parts(c)
        return (f"<b>{html.escape(value)}</b>" if c.best and c.n else html.escape(value)) + html.escape(rest)

    n = len(t.row_keys)
    head = "".join(f'<th class="label">{html.escape(str(x))}</th>' for x in t.row_keys)
    head += "".join(f"<th>{html.escape(str(x))}</th>" for x in t.columns + ["cost"])
    body = []
    rows = _body(t)
    for r, labels in zip(t.rows, rows):
        values = [html.escape(x.replace("*", "")) for x in labels[:n]] + [cell(r.cells.get(c)) for c in t.columns]
        values.append(html.escape(r.cost))
        body.append(_html_row("base" if r.is_base else "ref" if r.is_ref else "", values, n))
    if t.power:
        body.append(_html_row("power", [html.escape(x) for x in rows[-1]], n))
    legend = "".join(f"<li>{html.escape(line)}</li>" for line in t.legend)
    return (f'<table class="ablation">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + f'\n</tbody>\n</table>\n<ul class="legend">{legend}</ul>\n')


def _html_row(kind: str, values: list[str], labels: int) -> str:
    cells = "".join(f'<td class="label">{c}</td>' if i < labels else f"<td>{c}</td>" for i, c in enumerate(values))
    return f'<tr class="{kind}">{cells}</tr>' if kind else f"<tr>{cells}</tr>"


def to_html(t: Table) -> str:
    """A self-contained, styled HTML page holding the table and its legend."""
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Ablation table</title>\n'
            f"<style>{TABLE_CSS}</style>\n</head>\n<body>\n{html_table(t)}</body>\n</html>\n")


RENDERERS = {"md": to_markdown, "csv": to_csv, "latex": to_latex, "html": to_html}
