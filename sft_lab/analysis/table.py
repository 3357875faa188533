"""Ablation table: rows are factor levels, columns are eval tasks, cells are mean ± 95% CI.

Intervals and tests count both sources of variance, the seeds and the eval items (see
sft_lab/analysis/stats.py); a column whose items differ between rows is shown but never compared.
Significance is against a reference row, Holm-corrected across the table. Runs with different eval
protocols are refused unless explicitly allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from sft_lab.analysis import legend, stats
from sft_lab.analysis.collect import load_items
from sft_lab.errors import UserError
from sft_lab.tasks import is_generative, is_heldout

LOWER_IS_BETTER = {"loss", "bits_per_byte", "perplexity"}
NO_BEST = {"words"}  # a length: neither higher nor lower is better
METRIC_ORDER = {"heldout": ["bits_per_byte", "loss"]}
DEFAULT_ORDER = ["acc", "acc_norm", "bits_per_byte", "loss"]
# Generative tasks get a column per metric: what SFT changes is content, length, format and stopping.
GENERATIVE_METRICS = {"ifeval": ["prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                                 "inst_level_loose_acc", "stopped"], "gen": ["rougeL", "words", "stopped"]}
NOT_FACTORS = ("paths.", "tracking.", "force", "eval.", "status", "run_dir", "fingerprint", "protocol", "train.tokens_seen",
               "train.wall_s", "train.final_loss", "baseline", "group", "name", "started", "ended", "tuned_on",
               "train.label_tokens", "train.answer_tokens")  # outcomes of a run, not settings
ALPHA = legend.ALPHA


class TableError(UserError):
    pass


@dataclass
class Cell:
    mean: float = math.nan
    half: Optional[float] = None  # 95% CI half-width
    n: int = 0  # runs
    basis: str = "seeds+items"  # what the interval covers: seeds+items | items | runs
    delta: Optional[float] = None  # vs the reference the † uses: the ref row, else the row's base model
    delta_half: Optional[float] = None  # the Δ's 95% CI half-width, from the same test
    p: Optional[float] = None  # Holm-adjusted, vs the reference row
    untested: str = ""  # why a wanted test was not made: "one run" | "no variance" | "models"
    best: bool = False
    pooled: str = ""  # factors other than the seed that the cell's runs vary over, e.g. "seed×lr"


@dataclass
class Row:
    labels: tuple
    cells: dict[str, Cell]
    cost: str = ""
    is_base: bool = False
    is_ref: bool = False
    runs: list[str] = field(default_factory=list)
    same_as_base: list[str] = field(default_factory=list)  # generative tasks on which every answer is the base's
    model: Optional[str] = None  # the base model of the row's runs (None when they span several)
    base: Optional["Row"] = None  # the base-model row of that model


@dataclass
class Table:
    row_keys: list[str]
    columns: list[str]  # "task/metric", then "Average"
    rows: list[Row]
    legend: list[str]
    power: dict[str, str] = field(default_factory=dict)  # column -> minimum detectable effect, as text


def pick_metric(df: pd.DataFrame, task: str, metric: Optional[str]) -> Optional[str]:
    have = [c.split("/")[2] for c in df.columns if c.startswith(f"eval/{task}/")]
    if metric and metric in have:
        return metric
    for m in METRIC_ORDER.get("heldout" if is_heldout(task) else task, DEFAULT_ORDER):
        if m in have:
            return m
    return have[0] if have else None


def task_columns(df: pd.DataFrame, task: str, metric: Optional[str]) -> list[str]:
    """A task's columns: one metric (pick_metric), or every metric of a generative task."""
    have = {c.split("/")[2] for c in df.columns if c.startswith(f"eval/{task}/")}
    if is_generative(task) and not (metric and metric in have):
        found = [m for m in GENERATIVE_METRICS["ifeval" if task == "ifeval" else "gen"] if m in have]
        if found:
            return [f"{task}/{m}" for m in found]
    return [f"{task}/{pick_metric(df, task, metric)}"]


def higher_is_better(column: str) -> bool:
    return column.split("/")[-1] not in LOWER_IS_BETTER


def check_protocols(df: pd.DataFrame, tasks: list[str], rows: Optional[list[str]] = None) -> list[str]:
    """Names each protocol field that differs between runs; empty when all agree.

    Per task: its item limit, few-shot count, version and, for a generative task, max_gen_toks, the decoding,
    the stop strings and the template fingerprint (unless the template is a row factor: then its prompts differ
    by design, and the items' prompt hashes keep such rows from being compared item by item)."""
    by_template = "template" in (rows or [])

    def gen(p: dict, t: str):
        g = dict((p.get("generation") or {}).get(t) or {})
        g.pop("stop", None)
        if by_template:
            g.pop("template_fingerprint", None), g.pop("template", None), g.pop("until", None)
        return g or None

    def view(p: str) -> dict:
        p = json.loads(p)
        limits = p.get("limits") or {}
        have = [t for t in tasks if t in (p.get("task_versions") or {}) or t in (p.get("n_shot") or {})
                or t in limits] if (p.get("task_versions") or p.get("n_shot") or limits) else tasks
        return {"apply_chat_template": p.get("apply_chat_template"), "split": p.get("split", "all"),
                **{f"limit[{t}]": limits.get(t, p.get("limit")) for t in have},
                **{f"n_shot[{t}]": (p.get("n_shot") or {}).get(t) for t in have},
                **{f"version[{t}]": (p.get("task_versions") or {}).get(t) for t in have},
                **{f"generation[{t}]": gen(p, t) for t in have if is_generative(t)}}

    views = [view(p) for p in df["protocol"]]
    keys = dict.fromkeys(k for v in views for k in v)  # a task only among the runs that have it
    out = []
    for k in keys:
        values = {json.dumps(v[k]) for v in views if k in v}
        if len(values) > 1:
            out.append(f"{k}: {sorted(values)}")
    return out


MIXED = ("runs differ in eval protocol, so their numbers are not comparable: {}. Filter them apart (--filter) or "
         "pass --allow-mixed-protocols.")


def protocol_differences(df: pd.DataFrame, rows: list[str], skip_heldout: bool = False) -> list[str]:
    """check_protocols over every task of the runs (heldout left out when a base row joins: it has none)."""
    tasks = sorted({c.split("/")[1] for c in df.columns if c.startswith("eval/")})
    return check_protocols(df, [t for t in tasks if not skip_heldout or t != "heldout"], rows)


def pooled_factors(df: pd.DataFrame, rows: list[str], seeds: str) -> list[str]:
    """Config keys that vary inside a row group (other than the seed): the row averages over them."""
    keys = [c for c in df.columns if not c.startswith(NOT_FACTORS) and c not in rows and c != seeds
            and not c.startswith(("eval/", "stderr/"))]
    pooled = []
    for k in keys:
        if df.groupby(rows, dropna=False)[k].nunique(dropna=False).max() > 1:
            pooled.append(k)
    return pooled


class Items:
    """Per-item results of every run, per column, as runs × items matrices."""

    def __init__(self):
        self.cache: dict[tuple[str, str], dict] = {}

    def of(self, run_dir: str, column: str) -> dict:
        if (run_dir, column) not in self.cache:
            task, metric = column.split("/")
            self.cache[(run_dir, column)] = load_items(run_dir, task, metric) if run_dir else {}
        return self.cache[(run_dir, column)]

    def shared_keys(self, run_dirs: list[str], column: str) -> Optional[list]:
        """The item keys when every run has the same non-empty item set; None otherwise."""
        sets = [frozenset(self.of(d, column)) for d in run_dirs]
        if not sets or not sets[0] or any(s != sets[0] for s in sets):
            return None
        return sorted(sets[0], key=str)

    def matrix(self, run_dirs: list[str], column: str, keys: list) -> np.ndarray:
        per_run = [self.of(d, column) for d in run_dirs]
        if isinstance(per_run[0][keys[0]], tuple):  # (bits, bytes): a ratio metric
            bits = np.array([[r[k][0] for k in keys] for r in per_run])
            return stats.pseudo_values(bits, np.array([[r[k][1] for k in keys] for r in per_run]))
        return np.array([[r[k] for k in keys] for r in per_run], dtype=float)

    def average(self, run_dirs: list[str], columns: list[str], keys: dict[str, list]) -> np.ndarray:
        """runs × items whose row mean is the mean of the columns' means (each task weighs the same)."""
        mats = [self.matrix(run_dirs, c, keys[c]) for c in columns]
        total = sum(m.shape[1] for m in mats)
        parts = [(m - m.mean()) * total / (len(mats) * m.shape[1]) for m in mats]
        return np.concatenate(parts, axis=1) + np.mean([m.mean() for m in mats])


@dataclass
class _Layout:
    """What every cell of one table shares: its columns, which of them are compared, and the runs' items."""

    columns: list[str]
    acc_columns: list[str]  # the Average's columns
    shared: dict  # column -> the item keys every run (and base run) shares, or None
    differ: list[str]  # columns whose items differ between rows
    average_ok: bool
    pooled: list[str]
    seeds: str
    items: "Items"


def _cell(lay: _Layout, group: pd.DataFrame, col: str) -> Cell:
    items, dirs = lay.items, [d for d in group["run_dir"].tolist() if d]
    if col == "Average":
        if lay.average_ok and len(dirs) == len(group):
            est = stats.interval(items.average(dirs, lay.acc_columns, lay.shared))
            return Cell(est.mean, est.half, len(dirs), "seeds+items" if est.seeds_measured else "items")
        per_run = group[[f"eval/{c}" for c in lay.acc_columns]].mean(axis=1, skipna=False).dropna().tolist()
        mean, half, n = stats.t_interval(per_run)
        return Cell(mean, half, n, "runs")
    keys = lay.shared.get(col)
    own = items.shared_keys(dirs, col) if keys is None else keys
    if own and len(dirs) == len(group) and (keys is not None or col in lay.differ):
        est = stats.interval(items.matrix(dirs, col, own))
        return Cell(est.mean, est.half, len(dirs), "seeds+items" if est.seeds_measured else "items")
    vals = group[f"eval/{col}"].dropna().tolist() if f"eval/{col}" in group else []
    mean, half, n = stats.t_interval(vals)
    return Cell(mean, half, n, "runs")


def _row(lay: _Layout, labels: tuple, group: pd.DataFrame, is_base: bool = False) -> Row:
    cells = {col: _cell(lay, group, col) for col in lay.columns + (["Average"] if lay.acc_columns else [])}
    varying = [k for k in lay.pooled if k in group and group[k].nunique(dropna=False) > 1]
    if not is_base and varying:
        for c in cells.values():
            c.pooled = "×".join([lay.seeds] + varying)
    tokens, wall = group["train.tokens_seen"].mean(), group["train.wall_s"].mean()
    answer = group["train.answer_tokens"].mean() if "train.answer_tokens" in group else math.nan
    answers = "" if pd.isna(answer) else f" ({answer / 1e3:.1f}k answer)"  # what train.max_tokens counts
    cost = "" if is_base or pd.isna(tokens) else f"{tokens / 1e3:.1f}k tok{answers}, {wall:.0f} s"
    return Row(labels, cells, cost, is_base, runs=group["run_dir"].tolist())


def build(df: pd.DataFrame, rows: list[str], metric: Optional[str] = None, ref: Optional[dict[str, str] | str] = None,
          base: Optional[pd.DataFrame] = None, allow_mixed: bool = False, seeds: str = "seed",
          excluded: Optional[dict] = None) -> Table:
    """The numbers of the table: a row per level of `rows` (and a base row per model), each cell's interval, Δ
    and test against `ref`, the best per column and the power row; the legend is made from what was found."""
    runs = df[~df["baseline"]] if "baseline" in df else df
    if runs.empty:
        raise TableError("no finished runs to tabulate")
    missing = [k for k in rows if k not in runs.columns]
    if missing:
        raise TableError(f"--rows: unknown key(s) {missing}; try config keys such as data, template, lr, lora.r, seed")
    _refuse_selected_items(runs)
    tasks = sorted({c.split("/")[1] for c in runs.columns if c.startswith("eval/")})
    columns = [c for t in tasks for c in task_columns(runs, t, metric)]
    facts = legend.Facts(excluded=dict(excluded or {}), split=_split(runs))
    # a column some runs lack is shown where present, never compared, and named in the legend
    facts.partial = {c: runs.loc[runs[f"eval/{c}"].isna(), "name" if "name" in runs else "run_dir"].astype(str).tolist()
                     for c in columns if runs[f"eval/{c}"].isna().any()}
    has_base = base is not None and not base.empty
    diffs = protocol_differences(pd.concat([runs, base]) if has_base else runs, rows, skip_heldout=has_base)
    if diffs and not allow_mixed:
        raise TableError(MIXED.format("; ".join(diffs)))
    facts.mixed = diffs

    items = Items()
    all_dirs = [d for d in runs["run_dir"].tolist() if d]
    base_dirs = [d for d in base["run_dir"].tolist() if d] if has_base else []
    shared = {c: None if c in facts.partial else items.shared_keys(all_dirs + [d for d in base_dirs if items.of(d, c)], c)
              for c in columns}
    differ = [c for c in columns if shared[c] is None and c not in facts.partial and any(items.of(d, c) for d in all_dirs)]
    acc_columns = [c for c in columns if higher_is_better(c) and not is_generative(c.split("/")[0])
                   and c not in facts.partial]
    lay = _Layout(columns, acc_columns, shared, differ, bool(acc_columns) and all(shared[c] for c in acc_columns),
                  pooled_factors(runs, rows, seeds), seeds, items)

    table_rows = []
    models = base["model"].tolist() if has_base and "model" in base else [None] * (len(base) if has_base else 0)
    for i, model in enumerate(models):  # one base row per model
        name = "base model" if len(models) == 1 else f"base model ({model})"
        brow = _row(lay, (name,) + ("",) * (len(rows) - 1), base.iloc[[i]], is_base=True)
        brow.model = model
        table_rows.append(brow)
    for labels, group in runs.groupby(rows, dropna=False, sort=True):
        labels = tuple(_label(x) for x in (labels if isinstance(labels, tuple) else (labels,)))
        row = _row(lay, labels, group)
        row.is_ref = isinstance(ref, dict) and all(str(group[k].iloc[0]) == v for k, v in ref.items())
        row.model = group["model"].iloc[0] if "model" in group and group["model"].nunique(dropna=False) == 1 else None
        row.base = next((b for b in table_rows if b.is_base and (b.model == row.model or len(models) == 1)), None)
        table_rows.append(row)
    all_columns = columns + (["Average"] if acc_columns else [])
    comparable = [c for c in all_columns if c not in differ and c not in facts.partial
                  and (c != "Average" or not any(x in differ for x in acc_columns))]

    if isinstance(ref, dict) and sum(r.is_ref for r in table_rows) != 1:
        raise TableError(f"--ref {','.join(f'{k}={v}' for k, v in ref.items())} matches "
                         f"{sum(r.is_ref for r in table_rows)} rows; it must match exactly one")
    if ref == "base" and not any(r.is_base for r in table_rows):
        raise TableError("--ref base: there is no base-model row (evaluate the base model: drop --no-base)")
    ref_row = next((r for r in table_rows if r.is_ref), None)
    _deltas(table_rows, ref_row, comparable)
    facts.ref = _where(ref) if ref_row else None
    facts.ref_base, facts.base_rows = ref == "base", sum(r.is_base for r in table_rows)
    generative = sorted({c.split("/")[0] for c in columns if is_generative(c.split("/")[0])})
    if generative and base_dirs:
        facts.same_as_base = _mark_same_as_base(table_rows, generative)
    tested = [c for c in columns if shared[c]] + (["Average"] if lay.average_ok else [])
    facts.family, n_tests, facts.untested = _compare(table_rows, tested, ref, items, shared, acc_columns)
    facts.tests = n_tests if ref else None
    _mark_best(table_rows, comparable)
    power = _power(table_rows, tested, ref, facts.family, items, shared, acc_columns)
    facts.averaged, facts.differ, facts.power = bool(acc_columns), differ, bool(power)
    facts.generative, facts.pooled = bool(generative), lay.pooled
    return Table(list(rows), all_columns, table_rows, legend.lines(facts), power)


def _split(runs: pd.DataFrame) -> str:
    """The items the runs report: all, dev or test (eval.split; runs recorded before it: all)."""
    values = set(runs["eval.split"].fillna("all")) if "eval.split" in runs else {"all"}
    return values.pop() if len(values) == 1 else "mixed"


def _refuse_selected_items(runs: pd.DataFrame) -> None:
    """A configuration tuned on some items is not reported on those same items (the winner's curse)."""
    if "tuned_on" not in runs:
        return
    split = runs["eval.split"].fillna("all") if "eval.split" in runs else pd.Series("all", index=runs.index)
    tuned = runs["tuned_on"]
    bad = runs[tuned.notna() & ((split == tuned) | (split == "all"))]
    if not bad.empty:
        names = bad["name"].astype(str).tolist() if "name" in bad else bad["run_dir"].astype(str).tolist()
        raise TableError(f"{len(bad)} run(s) report the items their configuration was tuned on (tuned on "
                         f"{bad['tuned_on'].iloc[0]} items, eval.split={split[bad.index[0]]}): {', '.join(names[:4])}. "
                         "Report an ablation's final runs, which read the test items (python -m sft_lab.ablate).")


def _deltas(table_rows: list[Row], ref_row: Optional[Row], comparable: list[str]) -> None:
    """Each trained row's Δ against the reference row, or else its model's base row."""
    for row in table_rows:
        other = ref_row if ref_row else row.base
        if row.is_base or other is None or other is row:
            continue
        for col, cell in row.cells.items():
            b = other.cells.get(col)
            if b and not math.isnan(b.mean) and col in comparable:
                cell.delta = cell.mean - b.mean


def _mark_best(table_rows: list[Row], comparable: list[str]) -> None:
    for col in [c for c in comparable if c.split("/")[-1] not in NO_BEST]:
        cand = [r.cells[col] for r in table_rows if not r.is_base and col in r.cells and not math.isnan(r.cells[col].mean)]
        if cand:
            best = (max if higher_is_better(col) else min)(c.mean for c in cand)
            for c in cand:
                c.best = c.mean == best


def _mark_same_as_base(table_rows: list[Row], tasks: list[str]) -> bool:
    """Names, per row, the generative tasks on which every answer equals the base model's; whether any did."""
    from sft_lab.checks import same_as_base

    for row in table_rows:
        base_dir = next((d for d in (row.base.runs if row.base else []) if d), None)
        if row.is_base or not base_dir:
            continue
        row.same_as_base = [t for t in tasks if row.runs and all(same_as_base(d, base_dir, t) for d in row.runs if d)]
    return any(r.same_as_base for r in table_rows)


def _label(x):
    """A factor level as a reader wants it: lr=0.00018316240381848904 shows as 0.000183."""
    return format(x, ".3g") if isinstance(x, float) else x


def _arm(row: Row, col: str, items: Items, shared: dict, acc_columns: list[str]) -> np.ndarray:
    dirs = [d for d in row.runs if d]
    return items.average(dirs, acc_columns, shared) if col == "Average" else items.matrix(dirs, col, shared[col])


def _has_items(row: Row, col: str, items: Items, acc_columns: list[str]) -> bool:
    dirs = [d for d in row.runs if d]
    return bool(dirs) and all(items.of(d, c) for d in dirs for c in (acc_columns if col == "Average" else [col]))


def _where(ref: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in ref.items())


def _compare(table_rows: list[Row], columns: list[str], ref: Optional[dict[str, str] | str], items: Items,
             shared: dict, acc_columns: list[str]) -> tuple[int, int, dict[str, int]]:
    """Each trained row against the † reference: the ref row, or (ref "base" or none) its model's base row, whose
    one run is exact (nothing trained, scoring deterministic). The seed variance is pooled over every trained
    row of the column. Sets each cell's Δ interval and, when a ref is given, its Holm-adjusted p; returns the
    Holm family size (at least 1), the tests made, and the cells not tested by why."""
    ref_row = next((r for r in table_rows if r.is_ref), None)
    trained = [r for r in table_rows if not r.is_base]
    tests, untested = [], {"one run": 0, "no variance": 0, "models": 0}
    for col in columns:
        pool = stats.seed_pool([_arm(r, col, items, shared, acc_columns) for r in trained])
        for row in trained:
            other = ref_row or row.base
            if other is not None and other.is_base and not _has_items(other, col, items, acc_columns):
                continue  # the base model lacks this column's items (e.g. each run's own held-out split)
            if row.is_ref or other is None:
                if ref and not row.is_ref:
                    row.cells[col].untested = "models"
                    untested["models"] += 1
                continue
            result = None if pool is None else stats.compare(
                _arm(row, col, items, shared, acc_columns), _arm(other, col, items, shared, acc_columns),
                b_fixed=other.is_base, pool=pool)
            why = "one run" if result is None else "" if result.testable else "no variance"
            if why:
                if ref:
                    row.cells[col].untested = why
                    untested[why] += 1
                continue
            row.cells[col].delta_half = result.half
            if ref:
                tests.append((row, col, result.p))
    for (row, col, _), adj in zip(tests, stats.holm([p for *_, p in tests])):
        row.cells[col].p = adj
    if not ref:
        return 1, 0, {}
    return max(len(tests), 1), len(tests), untested


def _power(table_rows: list[Row], columns: list[str], ref, family: int, items: Items, shared: dict,
           acc_columns: list[str]) -> dict:
    """Per column, the minimum detectable effect of the table's own test: its comparison (base, ref row or two
    rows), the pooled seed variance and its df, the interaction, Holm at the table's family size."""
    out = {}
    ref_row = next((r for r in table_rows if r.is_ref), None)
    trained = [r for r in table_rows if not r.is_base]
    for col in columns:
        arms = {id(r): _arm(r, col, items, shared, acc_columns) for r in table_rows
                if _has_items(r, col, items, acc_columns)}
        pool = stats.seed_pool([arms[id(r)] for r in trained if id(r) in arms])
        tested = [r for r in trained if not r.is_ref and id(r) in arms and arms[id(r)].shape[0] > 1]
        if pool is None or not tested:
            out[col] = "– (one run per row)"
            continue
        if pool.run_ms <= 0:
            out[col] = "– (no seed variance)"
            continue
        k = arms[id(tested[0])].shape[1]
        inter = []
        for r in tested:
            other = ref_row or r.base or next((o for o in tested if o is not r), None)
            if other is not None and id(other) in arms:
                a, b = arms[id(r)], arms[id(other)]
                c = 1 / a.shape[0] + (0.0 if other.is_base else 1 / b.shape[0])
                inter.append(float((a.mean(axis=0) - b.mean(axis=0)).var(ddof=1)) - c * pool.residual if k > 1 else 0.0)
        n_a = min(arms[id(r)].shape[0] for r in tested)
        vs_base = ref_row is None and all(r.base and id(r.base) in arms for r in tested)
        n_b = None if vs_base else (arms[id(ref_row)].shape[0] if ref_row else n_a)
        design = stats.Design(max(0.0, pool.run_ms - pool.residual / k), pool.residual,
                              max(0.0, float(np.mean(inter))) if inter else 0.0, n_a, n_b, k, pool.run_df, family)
        mde = stats.detectable_effect(design)
        against = "base" if n_b is None else f"n={n_b}"
        out[col] = ("–" if math.isnan(mde) else f"{mde:.3f}") + f" (n={n_a} vs {against}, {k} items, df {pool.run_df})"
    return out


