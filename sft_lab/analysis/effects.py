"""Main effects: each factor's levels, averaged over every other factor, with 95% CIs."""

from __future__ import annotations

import pandas as pd

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
