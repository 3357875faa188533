"""An ablation's outputs, in <runs_dir>/ablate/<study_name>/: the table of the final runs on test items (one row
per arm, with its tuned values), the tuning curves, the learning curves, and ablation.md that holds them all."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd

from sft_lab.ablate.run import Arm
from sft_lab.ablate.spec import AblateSpec
from sft_lab.analysis import curves as cv
from sft_lab.analysis import plots, render
from sft_lab.analysis import table as tbl
from sft_lab.analysis.base import ensure_base
from sft_lab.analysis.collect import collect
from sft_lab.record import read_record


def final_runs(runs_dir: str, arms: list[Arm]) -> pd.DataFrame:
    df, _ = collect(runs_dir)
    dirs = {str(Path(d)) for a in arms for d in a.final_dirs}
    return df[df["run_dir"].map(lambda d: str(Path(d)) in dirs) | df["baseline"]]


def ablation_table(spec: AblateSpec, runs_dir: str, arms: list[Arm], base: bool = True) -> tbl.Table:
    """One row per arm (its factors and tuned values), tested against the first arm."""
    df = final_runs(runs_dir, arms)
    runs = df[~df["baseline"]]
    # a base row only when every arm fine-tunes the same model (arms over model.* keys have no one base)
    one_model = all(runs[c].astype(str).nunique() <= 1 for c in runs.columns if c.startswith("model"))
    base_rows = ensure_base(df, runs_dir) if base and one_model else None
    firsts = {str(Path(d)) for d in arms[0].final_dirs}
    first = runs[runs["run_dir"].map(lambda d: str(Path(d)) in firsts)].iloc[0]
    ref = {k: str(first[k]) for k in spec.arms}
    return tbl.build(runs, list(spec.arms) + list(spec.tune), ref=ref, base=base_rows)


def _score(v: float) -> str:
    return f"{v:.4f}"


def write(spec: AblateSpec, runs_dir: str, arms: list[Arm], out: Path, base: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    higher = spec.objective.direction == "maximize"
    objective = " + ".join(spec.objective.metrics)
    table = ablation_table(spec, runs_dir, arms, base)
    (out / "table.md").write_text(render.RENDERERS["md"](table))
    tuning = cv.tuning_curves({a.label: a.values for a in arms}, higher, {a.label: a.pruned for a in arms})
    if any(c.curve for c in tuning):
        plots.tuning_curves(tuning, str(out / "tuning_curves.svg"), objective)
    runs = {a.label: [_curve(d) for d in a.final_dirs] for a in arms}
    metrics = cv.curve_metrics([c for cs in runs.values() for c in cs])
    learning = [c for m in metrics for a in arms if (c := cv.learning_curve(a.label, runs[a.label], m))]
    if learning:
        plots.learning_curves(learning, str(out / "learning_curves.svg"))
    text = _markdown(spec, arms, table, tuning, learning, higher, objective, runs_dir)
    path = out / "ablation.md"
    path.write_text(text)
    (out / "arms.json").write_text(json.dumps([a.__dict__ for a in arms], indent=1, default=str))
    return path


def _curve(run_dir: str) -> list[dict]:
    record = read_record(Path(run_dir))
    return cv.run_curve((record.train or {}) if record else {})


def _markdown(spec, arms, table, tuning, learning, higher, objective, runs_dir) -> str:
    tuned_keys = list(spec.tune)
    n_final = len(spec.seeds)
    lines = [f"# Ablation: {spec.study_name}", "",
             f"**Arms** ({len(arms)}): " + "; ".join(a.label for a in arms) + ".",
             f"**Tuned per arm**: {', '.join(tuned_keys)}, {spec.trials} trials each (Optuna, "
             f"{spec.sampler.get('type', 'tpe')} sampler, {_pruner(spec)}), seed(s) "
             f"{spec.tuning_seeds}, objective {objective} ({'higher' if higher else 'lower'} is better) on the **dev** "
             "items of each task (eval.split=dev).",
             f"**Final runs**: each arm's best configuration with fresh seeds {spec.seeds}, scored on the **test** items "
             "(eval.split=test), which no tuning trial read. The split is a hash of each item's document, the same "
             "for every run.", "",
             "## Tuned values", "",
             "| arm | " + " | ".join(tuned_keys) + f" | best dev {objective} | trials (finished / pruned / failed) |",
             "|---|" + "---|" * (len(tuned_keys) + 2)]
    for a in arms:
        best = max(a.values) if higher else min(a.values)
        lines.append(f"| {a.label} | " + " | ".join(_fmt(a.best.get(k)) for k in tuned_keys)
                     + f" | {_score(best)} | {len(a.values)} / {a.pruned} / {a.failed} |")
    lines += ["", "Every tuning trial (dev items):", "", "| arm | " + " | ".join(tuned_keys) + f" | dev {objective} |",
              "|---|" + "---|" * (len(tuned_keys) + 1)]
    for a in arms:
        for t in sorted(a.trials, key=lambda t: [_order(t["params"].get(k)) for k in tuned_keys]):
            score = _score(t["value"]) if t["value"] is not None else t["state"]
            lines.append(f"| {a.label} | " + " | ".join(_fmt(t["params"].get(k)) for k in tuned_keys) + f" | {score} |")
    lines += ["", f"## Results on test items ({n_final} seeds per arm)", "", render.RENDERERS["md"](table).rstrip(), ""]
    lines += ["## Tuning curves", "",
              f"Expected best dev {objective} of t trials drawn from each arm's finished trials (Dodge et al. 2019).", ""]
    drawn = [c for c in tuning if c.curve]
    if drawn:
        t_max = max(len(c.curve) for c in drawn)
        lines += ["| arm | " + " | ".join(f"t={t}" for t in range(1, t_max + 1)) + " |",
                  "|---|" + "---|" * t_max]
        for c in drawn:
            lines.append(f"| {c.arm} | " + " | ".join(_score(c.curve[t]) if t < len(c.curve) else "" for t in range(t_max)) + " |")
        lines += ["", "![tuning curves](tuning_curves.svg)", ""]
    lines += [cv.ranking_sentence(tuning, higher), ""]
    lines += ["## Learning curves", ""]
    if learning:
        lines += ["Each arm's final runs during training, against the answer tokens trained (test items, "
                  f"{_curve_source(spec)}): mean over seeds ± 95% CI.", "", "![learning curves](learning_curves.svg)", ""]
        lines += ["| arm | metric | answer tokens → value |", "|---|---|---|"]
        for c in learning:
            lines.append(f"| {c.arm} | {c.metric} | " + ", ".join(f"{t:,.0f}: {m:.3f}" for t, m in zip(c.tokens, c.mean))
                         + " |")
    else:
        lines.append("No learning curve: the final runs recorded no periodic held-out loss or items (they need a "
                     "held-out split, data.heldout_fraction > 0, or curve.every_tokens).")
    lines += ["", "## Cost", "", _cost(arms)]
    return "\n".join(lines) + "\n"


def _curve_source(spec) -> str:
    c = spec.curve
    if not c.every_tokens:
        return f"the held-out loss every {spec.prune_every} steps"
    tasks = f"{c.limit} items of {', '.join(c.tasks)}" if c.tasks else f"{c.limit} items of each final benchmark"
    return f"every {c.every_tokens:,} answer tokens: the held-out loss and {tasks}"


def _pruner(spec) -> str:
    kind = spec.pruner.get("type", "median")
    return "no pruning" if kind == "none" else f"{kind} pruner on the held-out loss every {spec.prune_every} steps"


def _cost(arms: list[Arm]) -> str:
    """Training and start-to-end time of the tuning trials and of the final runs, from their records."""
    def totals(dirs):
        train = wall = 0.0
        for d in dirs:
            r = read_record(Path(d))
            if r is None:
                continue
            train += float((r.train or {}).get("wall_s") or 0)
            if r.started and r.ended:
                wall += (datetime.fromisoformat(r.ended) - datetime.fromisoformat(r.started)).total_seconds()
        return len(dirs), train, wall

    parts = []
    for what, dirs in (("tuning", [d for a in arms for d in a.trial_dirs]), ("final", [d for a in arms for d in a.final_dirs])):
        n, train, wall = totals(dirs)
        parts.append(f"{n} {what} runs: {wall / 60:.1f} min start to end, {train / 60:.1f} min of it training")

    return "; ".join(parts) + " (runs reused from earlier invocations count once, as recorded)."


def _order(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _fmt(v) -> str:
    return format(v, ".3g") if isinstance(v, float) else str(v)
