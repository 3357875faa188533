"""The ablation table's legend: what its cells, marks and rows mean, from the facts of one table (Facts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

ALPHA = 0.05

CELLS = ("Cells: mean ± 95% CI over seeds and eval items (two variance components, t with Welch–Satterthwaite df), "
         "n = runs. 'items only': one run, so seed variance was not measured and the interval covers the eval items "
         "alone. 'runs only': no per-item results, t-interval over runs. A cell's interval includes the item "
         "variance, which cancels when two rows are compared on the same items: overlapping cell intervals are not "
         "the test; Δ ± its CI is. Best per column in bold.")
AVERAGE = " Average: mean of the accuracy columns, every task weighted the same."
GENERATIVE_LEGEND = (
    "Generative columns: greedy answers, prompted by each run's template and stopped at its end of turn or EOS, up "
    "to eval.max_gen_toks. ifeval: prompt_level_* is 1 when a prompt's every instruction is followed; inst_level_* "
    "counts every instruction of every prompt (as lm-eval reports it), so it is a ratio (instructions followed / "
    "instructions given), tested over prompts with per-prompt pseudo-values: each prompt is one item, weighted by "
    "its number of instructions. gen*: rougeL is ROUGE-L F against the reference answer, words the answer's length "
    "(no best), stopped the share of answers that ended before the token limit.")
POWER_LEGEND = ("min. detectable Δ: the smallest true difference from {against} that this table's † test finds with "
                "80% power, {holm}, for a row of the fewest seeds here and the items shown, with the table's own "
                "variance estimates (pooled seed variance and its df, the row-by-item interaction). Checked against "
                "simulated tests in benchmarks/stats/significance_simulation.py.")


@dataclass
class Facts:
    """What the legend explains, as the numbers layer (sft_lab.analysis.table.build) found it."""

    averaged: bool = False  # an Average column
    mixed: list[str] = field(default_factory=list)  # protocol differences, allowed by the user
    ref: Optional[str] = None  # the reference row, as KEY=VALUE,...; None: none
    ref_base: bool = False  # --ref base
    base_rows: int = 0  # base-model rows (one per model)
    same_as_base: bool = False  # some row's answers all equal the base model's
    tests: Optional[int] = None  # † tests made (None: no reference, so no †)
    untested: dict[str, int] = field(default_factory=dict)  # why -> cells
    family: int = 1  # Holm's family size
    partial: dict[str, list[str]] = field(default_factory=dict)  # column -> runs without it
    differ: list[str] = field(default_factory=list)  # columns whose items differ between rows
    power: bool = False
    generative: bool = False
    pooled: list[str] = field(default_factory=list)
    excluded: dict = field(default_factory=dict)
    split: str = "all"  # the items reported: all | dev | test | mixed (eval.split)


def lines(f: Facts) -> list[str]:
    out = [CELLS + (AVERAGE if f.averaged else "")]
    if f.split in ("dev", "test"):
        out.append(f"Items: the {f.split} split of each task (eval.split={f.split}: a hash of each item's document, "
                   "the same for every run).")
    if f.mixed:
        out.append("WARNING: mixed eval protocols (" + "; ".join(f.mixed) + ").")
    if f.ref:
        out.append(f"Δ: difference from the reference row ({f.ref}) ± its 95% CI, from the same test as †.")
    elif f.base_rows:
        out.append("Δ: difference from the base model" + (" of the row's model" if f.base_rows > 1 else "")
                   + ", evaluated with the same protocol, ± its 95% CI (seeds and items random; the item variance "
                   "the two rows share cancels).")
    if f.same_as_base:
        out.append("‡: every greedy answer of this row's runs equals the base model's on the task(s) named: the "
                   "adapter may not have been applied, or training changed nothing.")
    if f.tests is not None:
        model = "each row's model" if f.base_rows > 1 else "the base model"
        against = f"the reference row ({f.ref})" if f.ref else model
        out.append(
            f"†: differs from {against} at p < {ALPHA} after a Holm correction across the {f.tests} tests in this table. "
            "Each test treats seeds and eval items as random: a t on the difference of means whose variance is the "
            "rows' seed variance (pooled over every trained row of the column, df = Σ(runs − 1)) plus the row-by-item "
            "interaction (a difference of mean squares), with Satterthwaite df taken at the seed term's upper 80% "
            "confidence limit" + ("; the base model has no seeds." if not f.ref else "."))
    if f.untested.get("one run"):
        out.append(f"°: not tested ({f.untested['one run']} cell(s)): this row or the reference has one run, so seed "
                   "variance was not measured and no difference can be claimed. Run more seeds (seed=0,1,2).")
    if f.untested.get("no variance"):
        out.append(f"°: not tested ({f.untested['no variance']} cell(s)): every seed of every row scored the same, so "
                   "the seed variance is 0 and there is nothing to test a difference against.")
    if f.untested.get("models"):
        out.append(f"°: not tested ({f.untested['models']} cell(s)): the row's runs span several base models, so it "
                   "has no one base row to be compared with.")
    if f.partial:
        out.append("Not in every run (shown where present as a mean over the runs that have it, never compared; "
                   "'–' where a row has none): " + "; ".join(
                       f"{c}, missing from {', '.join(names[:4])}" + (f" and {len(names) - 4} more" if len(names) > 4
                                                                        else "") for c, names in f.partial.items()))
    if f.differ:
        out.append("Not compared (no bold, Δ or test): " + ", ".join(f.differ) + ": its items differ between rows "
                   "(e.g. each run's own held-out split), so the rows are scored on different test sets.")
    if f.power:
        out.append(POWER_LEGEND.format(
            against="the reference row" if f.ref else "the base model" if f.ref_base else "another row of as many seeds",
            holm=f"at Holm's first step over the table's {f.family} tests (α/{f.family}; it assumes that difference is "
                 "the only real one in the table)" if f.family > 1 else "at α=0.05"))
    if f.generative:
        out.append(GENERATIVE_LEGEND)
    if f.pooled:
        out.append("Rows pool over: " + ", ".join(f.pooled[:6]) + ("…" if len(f.pooled) > 6 else "")
                   + "; those cells' n counts runs over the factors named in the cell (e.g. n=4: seed×lr).")
    if f.excluded:
        out.append("Excluded: " + ", ".join(f"{n} {s}" for s, n in sorted(f.excluded.items())) + " run(s).")
    return out
