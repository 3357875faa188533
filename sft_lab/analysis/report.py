"""A study from a runs folder: its tables, its figures, and one self-contained HTML report.

    python analysis/report.py RUNS_DIR --out report.html      # the report alone
    python analysis/study.py RUNS_DIR --out docs/study        # tables (markdown), figures (SVG) and the report

Two tables, each tested against the base model (--ref base) with its own Holm correction: the
benchmarks (accuracy, and their Average) and the held-out sets (bits per byte). Three figures: the
benchmarks as bars, the transfer matrix (train data × held-out set, Δ vs base) and learning vs
forgetting (Δ on the in-domain held-out sets against Δ on the benchmark Average, one point per row).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from sft_lab.analysis import plots, stats
from sft_lab.analysis import render
from sft_lab.analysis import table as tbl
from sft_lab.analysis.base import apply_filters, ensure_base
from sft_lab.analysis.collect import collect
from sft_lab.errors import UserError
from sft_lab.tasks import HELDOUT_PREFIX, is_generative, is_heldout

FIGURES = {"benchmarks": "Benchmarks: mean ± 95% CI per row", "transfer": "Transfer matrix: Δ bits per byte on each "
           "held-out set vs the base model (negative: the trained model predicts those answers better)",
           "forgetting": "Learning vs forgetting: in-domain held-out gain against the change on the benchmarks"}


@dataclass
class Study:
    runs_dir: str
    runs: pd.DataFrame  # finished trained runs
    base: pd.DataFrame  # the base-model run(s), empty without one
    rows: list[str]
    tables: dict[str, tbl.Table]  # "benchmarks", "heldout"
    excluded: dict
    figures: dict[str, Path] = field(default_factory=dict)


def _columns_of(df: pd.DataFrame, keep) -> pd.DataFrame:
    drop = [c for c in df.columns if c.startswith(("eval/", "stderr/")) and not keep(c.split("/")[1])]
    return df.drop(columns=drop)


def varying_factors(runs: pd.DataFrame, seeds: str = "seed") -> list[str]:
    """The config keys runs differ in, other than the seed: the study's rows by default."""
    keys = [c for c in runs.columns if not c.startswith(tbl.NOT_FACTORS) and c != seeds and "." not in c
            and not c.startswith(("eval/", "stderr/"))] + [c for c in ("lr", "lora.r") if c in runs]
    found = [k for k in dict.fromkeys(keys) if runs[k].astype(str).nunique() > 1]
    return found or ["data"]


def analyse(runs_dir: str, rows: Optional[list[str]] = None, filters: Optional[list[str]] = None,
            base: bool = True) -> Study:
    df, excluded = collect(runs_dir)
    if df.empty:
        raise tbl.TableError(f"no finished runs in {runs_dir}")
    df = apply_filters(df, filters or [])
    runs = df[~df["baseline"]]
    if runs.empty:
        raise tbl.TableError(f"no finished trained runs in {runs_dir} (only base-model runs)")
    base_df = ensure_base(df, runs_dir) if base else df.iloc[0:0]
    rows = rows or varying_factors(runs)
    ref = "base" if not base_df.empty else None
    tables = {}
    for name, keep in (("benchmarks", lambda t: not is_heldout(t) and not is_generative(t)), ("heldout", is_heldout),
                       ("generation", is_generative)):
        part = _columns_of(runs, keep)
        if any(c.startswith("eval/") for c in part.columns):
            tables[name] = tbl.build(part, rows, ref=ref, base=_columns_of(base_df, keep) if ref else None,
                                     excluded=dict(excluded))
    return Study(runs_dir, runs, base_df, rows, tables, dict(excluded))


def cost(study: Study) -> str:
    """What the study cost, from the records: wall time per run (start to end, evaluation included) and in all."""
    def wall(df: pd.DataFrame) -> pd.Series:
        fmt = "%Y-%m-%dT%H:%M:%S%z"
        return (pd.to_datetime(df["ended"], format=fmt) - pd.to_datetime(df["started"], format=fmt)).dt.total_seconds()

    runs, base = wall(study.runs), wall(study.base) if not study.base.empty else pd.Series(dtype=float)
    total = runs.sum() + base.sum()
    both = pd.concat([study.runs, study.base])
    fmt = "%Y-%m-%dT%H:%M:%S%z"
    span = (pd.to_datetime(both["ended"], format=fmt).max() - pd.to_datetime(both["started"], format=fmt).min())
    text = (f"{len(runs)} trained run{'s' * (len(runs) != 1)}, {runs.mean() / 60:.1f} min each from start to end (training "
            f"{study.runs['train.wall_s'].mean():.0f} s of it, {study.runs['train.tokens_seen'].mean():,.0f} tokens)")
    if len(base):
        text += f", plus the base model's evaluation, {base.sum() / 60:.1f} min"
    return text + f": {total / 3600:.2f} h in all, {span.total_seconds() / 3600:.2f} h from the first start to the last end."


# ---------------------------------------------------------------- figures


def in_domain_points(study: Study) -> list[plots.Point]:
    """Per row: Δ bits per byte on the held-out sets of the row's own sources (x) and Δ benchmark Average (y),
    each with the 95% CI of the difference from the base model."""
    held, bench = study.tables.get("heldout"), study.tables.get("benchmarks")
    if held is None or bench is None or study.base.empty or "Average" not in bench.columns:
        return []
    items = tbl.Items()
    base_dirs = study.base["run_dir"].tolist()
    all_dirs = study.runs["run_dir"].tolist()
    points = []
    for row in bench.rows:
        if row.is_base:
            continue
        runs = study.runs[study.runs["run_dir"].isin(row.runs)]
        sources = sorted({c.split(".")[2] for c in runs.columns if c.startswith("data.sources.") and c.endswith(".path")
                          and runs[c].notna().all()})
        cols = [f"heldout_{s}/bits_per_byte" for s in sources if f"heldout_{s}/bits_per_byte" in held.columns]
        keys = {c: items.shared_keys(all_dirs + base_dirs, c) for c in cols}
        avg = row.cells.get("Average")
        if not cols or any(k is None for k in keys.values()) or avg is None or avg.delta_half is None:
            continue
        result = stats.compare(items.average(row.runs, cols, keys), items.average(base_dirs, cols, keys), b_fixed=True)
        if result is None or not result.testable:
            continue
        points.append(plots.Point(plots.row_label(row), result.diff, result.half, avg.delta, avg.delta_half))
    return points


def make_figures(study: Study, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    bench, held = study.tables.get("benchmarks"), study.tables.get("heldout")
    if bench is not None:
        out["benchmarks"] = folder / "benchmarks.svg"
        plots.bars(bench, str(out["benchmarks"]))
    transfer = [c for c in (held.columns if held else []) if c.startswith(HELDOUT_PREFIX)]
    if held is not None and transfer and not study.base.empty and len(study.rows) == 1:
        out["transfer"] = folder / "transfer.svg"
        plots.heatmap(held, str(out["transfer"]), columns=transfer)
    points = in_domain_points(study)
    if points:
        out["forgetting"] = folder / "forgetting.svg"
        plots.scatter(points, str(out["forgetting"]),
                      "Δ bits per byte on its own data's held-out set(s) vs base (left: learnt more)",
                      "Δ mean benchmark accuracy vs base (down: forgot)",
                      "learning vs forgetting: Δ ± 95% CI over seeds and items, one point per training set")
    study.figures = out
    return out


# ---------------------------------------------------------------- the HTML report

REPORT_CSS = render.TABLE_CSS + """
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
.meta { color: #666; font-size: 13px; } figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #444; } dl.protocol { display: grid; grid-template-columns: max-content auto;
gap: 4px 16px; font-size: 13px; } dl.protocol dt { font-weight: 600; } .legend-box { background: #f7f9fc;
border-left: 4px solid #4477aa; padding: 0.5em 1em; font-size: 13px; }
.sample { border: 1px solid #ddd; margin: 1em 0; padding: 0.5em; } .sample pre { white-space: pre-wrap;
font-size: 12px; margin: 0.3em 0; } .answers { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr));
gap: 8px; } .answer { background: #fafafa; padding: 0.4em; } .who { font-weight: 600; font-size: 13px; }
.scores { font-size: 11px; color: #555; }
"""


def _protocol(study: Study) -> dict[str, str]:
    first = study.runs.iloc[0]
    protocol = json.loads(first["protocol"])

    def get(key, default="–"):
        v = first.get(key)
        return default if v is None or (isinstance(v, float) and pd.isna(v)) else v

    shots = sorted({str(v) for v in (protocol.get("n_shot") or {}).values()})
    held_n = min(int(x) for x in (protocol.get("limit"), get("data.heldout_max", None)) if x is not None)
    return {
        "model": f"{get('model')} ({get('model.name_or_path')})",
        "training": f"LoRA r={get('lora.r')}, lr={get('lr')}, "
                    + (f"{get('train.max_tokens')} answer tokens" if get("train.max_tokens", None) is not None
                       else f"{get('train.max_steps')} steps") + " of batch "
                    f"{get('train.batch_size')}, max length {get('train.max_length')}, template {get('template')}",
        "tasks": ", ".join(protocol.get("tasks") or []),
        "items per task": f"{protocol.get('limit') or 'all'} (the first items of each task, the same for every run)",
        "few-shot": ", ".join(shots) or "0",
        "chat template": str(protocol.get("apply_chat_template")),
        "held-out sets": (f"heldout_<source>: the data.heldout_fraction={get('data.heldout_fraction')} split of each "
                          f"local set by prompt hash (never trained on by any run): up to {held_n} items of up to "
                          f"{get('eval.heldout_max_tokens', 'the window')} tokens, after a fixed shuffle; bits per "
                          "byte of the reference answer"),
        "lm-eval": str(protocol.get("lm_eval_version")),
        "runs": f"{len(study.runs)} trained ({', '.join(f'{n} {s}' for s, n in study.excluded.items()) or 'none'} "
                f"excluded), {len(study.base)} base-model run",
    }


def _runs_table(study: Study, out_dir: Path) -> str:
    head = ["run", *study.rows, "seed", "final loss", "tokens", "train s", "record"]
    body = []
    frames = [study.base, study.runs] if not study.base.empty else [study.runs]
    for _, r in pd.concat(frames).iterrows():
        record = Path(r["run_dir"]) / "record.json"
        link = os.path.relpath(record.resolve(), out_dir.resolve())
        loss, tokens, wall = r.get("train.final_loss"), r.get("train.tokens_seen"), r.get("train.wall_s")
        cells = [Path(r["run_dir"]).name if r["baseline"] else r.get("name", Path(r["run_dir"]).name),
                 *[("base model" if r["baseline"] else r.get(k, "")) for k in study.rows],
                 "" if r["baseline"] else r.get("seed", ""),
                 "" if pd.isna(loss) else f"{loss:.4f}", "" if pd.isna(tokens) else f"{tokens:,.0f}",
                 "" if pd.isna(wall) else f"{wall:.0f}"]
        body.append("<tr>" + "".join(f"<td class=\"label\">{html.escape(str(c))}</td>" for c in cells)
                    + f'<td><a href="{html.escape(link)}">record.json</a></td></tr>')
    return (f'<table class="ablation runs"><thead><tr>{"".join(f"<th class=label>{h}</th>" for h in head)}</tr>'
            "</thead><tbody>" + "".join(body) + "</tbody></table>")


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    kind = "svg+xml" if path.suffix == ".svg" else "png"
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/{kind};base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


TITLES = {"benchmarks": "Benchmarks (accuracy)", "heldout": "Held-out sets (bits per byte, lower is better)",
          "generation": "Generation (IFEval and generated answers)"}
MD_TITLES = {**TITLES, "heldout": "Held-out sets (bits per byte)"}
SAMPLES_PER_TASK = 2  # the first prompts of each generative task, plus as many where the rows differ most
SAMPLE_CHARS = 1200


def samples_html(study: Study) -> str:
    """The same prompts answered by the base model and by each row's first seed, side by side.

    The rule: for each generative task, its first SAMPLES_PER_TASK prompts (by item id), then the
    SAMPLES_PER_TASK prompts whose per-item score differs most across the columns (IFEval: the share of
    instructions followed, loose; gen*: ROUGE-L), ties by item id."""

    table = study.tables.get("generation")
    if table is None:
        return ""
    columns = []  # (label, run_dir)
    if not study.base.empty:
        columns.append(("base model", study.base["run_dir"].iloc[0]))
    for row in table.rows:
        if row.is_base or not row.runs:
            continue
        runs = study.runs[study.runs["run_dir"].isin(row.runs)].sort_values("seed" if "seed" in study.runs else "run_dir")
        columns.append((" / ".join(str(x) for x in row.labels) + " (seed " + str(runs["seed"].iloc[0]) + ")"
                        if "seed" in runs else " / ".join(map(str, row.labels)), runs["run_dir"].iloc[0]))
    tasks = sorted({c.split("/")[0] for c in table.columns if "/" in c})
    parts = []
    for task in tasks:
        per_col = [_generations(d, task) for _, d in columns]
        shared = sorted(set.intersection(*[set(g) for g in per_col]) if per_col else set(), key=lambda k: (k[0] if isinstance(k[0], int) else -1, str(k)))
        if not shared:
            continue
        chosen = shared[:SAMPLES_PER_TASK]
        spread = sorted(shared[SAMPLES_PER_TASK:], key=lambda k: -_spread([g[k] for g in per_col]))
        chosen += [k for k in spread[:SAMPLES_PER_TASK] if _spread([g[k] for g in per_col]) > 0]
        for key in chosen:
            first = per_col[0][key]
            cells = "".join(
                f'<div class="answer"><div class="who">{html.escape(label)}</div><pre>{html.escape(_clip(g[key]["answer"]))}</pre>'
                f'<div class="scores">{html.escape(_scores(g[key]))}</div></div>' for (label, _), g in zip(columns, per_col))
            parts.append(f'<div class="sample" data-task="{html.escape(task)}"><div class="prompt"><b>{html.escape(task)}'
                         f"</b> item {html.escape(str(key[0]))}<pre>{html.escape(_clip(first.get('instruction') or ''))}</pre>"
                         f'</div><div class="answers">{cells}</div></div>')
    if not parts:
        return ""
    rule = (f"Prompts: for each generative task, its first {SAMPLES_PER_TASK} items, then up to {SAMPLES_PER_TASK} where "
            "the per-item score differs most across the columns (IFEval: instructions followed, loose; otherwise ROUGE-L). "
            "Each trained row shows its first seed; answers are greedy and cut here at "
            f"{SAMPLE_CHARS} characters (whole in each run's generations/&lt;task&gt;.jsonl).")
    return f'<p class="meta">{rule}</p>' + "\n".join(parts)


def _generations(run_dir: str, task: str) -> dict:
    path = Path(run_dir) / "generations" / f"{task}.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r.get("doc_id"), r.get("doc_hash")): r for r in rows}


def _item_score(g: dict) -> float:
    v = g.get("inst_level_loose_acc")
    if isinstance(v, list) and v:
        return sum(v) / len(v)
    return float(g.get("rougeL") or 0.0)


def _spread(gens: list[dict]) -> float:
    scores = [_item_score(g) for g in gens]
    return max(scores) - min(scores) if scores else 0.0


def _scores(g: dict) -> str:
    out = []
    for k in ("prompt_level_strict_acc", "prompt_level_loose_acc", "rougeL", "words", "stopped"):
        if k in g:
            v = g[k]
            out.append(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {int(v)}")
    if isinstance(g.get("inst_level_loose_acc"), list):
        v = g["inst_level_loose_acc"]
        out.append(f"instructions followed (loose) {sum(v)}/{len(v)}")
    if g.get("answer_tokens") is not None:
        out.append(f"{g['answer_tokens']} tokens")
    return " · ".join(out)


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + " […]"


def render_html(study: Study, out: Path) -> str:
    legends = list({line.split(":")[0]: line for t in reversed(study.tables.values()) for line in t.legend}.values())
    parts = [f"<h1>sft-lab report: {html.escape(str(study.runs_dir))}</h1>",
             f'<p class="meta">{len(study.runs)} trained run{"s" * (len(study.runs) != 1)}, rows by {html.escape(" × ".join(study.rows))}; generated '
             f"{time.strftime('%Y-%m-%d %H:%M')}. Cost: {html.escape(cost(study))}</p>",
             '<div class="legend-box"><b>How to read the tables.</b> ± is a 95% confidence interval over seeds and '
             "eval items; Δ is the change from the base model; † marks a change from the base model that is "
             "significant at p &lt; 0.05 after a Holm correction across the table; ° marks a cell that cannot be "
             "tested (one seed). The full legend is under each table.</div>"]
    for name, t in study.tables.items():
        parts += [f"<h2>{TITLES[name]}</h2>", render.html_table(t)]
    samples = samples_html(study)
    if samples:
        parts += ['<h2 id="samples">Samples</h2>', samples]
    if study.figures:
        parts.append("<h2>Figures</h2>")
        parts += [_figure(p, FIGURES[k]) for k, p in study.figures.items()]
    parts += ["<h2>Evaluation protocol</h2>", '<dl class="protocol">' + "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in _protocol(study).items()) + "</dl>",
              "<h2>Legend</h2>", '<ul class="legend">' + "".join(f"<li>{html.escape(x)}</li>" for x in legends) + "</ul>",
              "<h2>Runs</h2>", _runs_table(study, out.parent)]
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>sft-lab report: {html.escape(str(study.runs_dir))}</title>\n<style>{REPORT_CSS}</style>\n"
            "</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def write_report(study: Study, out: Path, figures_dir: Optional[Path] = None) -> None:
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_figures(study, figures_dir or Path(tmp))
        out.write_text(render_html(study, out))


# ---------------------------------------------------------------- command lines


def _parser(prog: str, out_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].strip())
    p.add_argument("runs_dir", help="folder of run folders (record.json)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--rows", help="factor keys for the rows (default: the keys the runs differ in, e.g. data)")
    p.add_argument("--filter", action="append", default=[], help="KEY=VALUE; repeatable")
    return p


def report_main(argv=None) -> int:
    args = _parser("analysis/report.py", "the HTML file to write").parse_args(argv)
    try:
        study = analyse(args.runs_dir, args.rows.split(",") if args.rows else None, args.filter)
        write_report(study, Path(args.out))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def study_main(argv=None) -> int:
    args = _parser("analysis/study.py", "the folder for table.md, the figures (SVG) and report.html").parse_args(argv)
    out = Path(args.out)
    try:
        study = analyse(args.runs_dir, args.rows.split(",") if args.rows else None, args.filter)
        write_report(study, out / "report.html", figures_dir=out)
        (out / "table.md").write_text("\n".join(f"### {MD_TITLES[n]}\n\n{render.to_markdown(t)}"
                                                for n, t in study.tables.items()) + f"\nCost: {cost(study)}\n")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in ["table.md", "report.html", *[p.name for p in study.figures.values()]]:
        print(f"wrote {out / name}", file=sys.stderr)
    return 0
