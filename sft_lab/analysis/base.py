"""The tables' base-model rows: the base model evaluated once per model under the runs' own protocol (through
the run pipeline, cached in the runs folder), and the --filter that keeps them. The table CLI and the report
both call it."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from sft_lab import CONF_DIR
from sft_lab.analysis import table as tbl
from sft_lab.analysis.collect import collect
from sft_lab.tasks import is_generative, is_heldout


def pairs(text: str | None, what: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (text or "").split(",")):
        if "=" not in part:
            raise tbl.TableError(f"{what}: expected KEY=VALUE, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def apply_filters(df: pd.DataFrame, filters: list[str]) -> pd.DataFrame:
    for f in filters:
        for k, v in pairs(f, "--filter").items():
            if k not in df:
                raise tbl.TableError(f"--filter: unknown key {k!r}")
            df = df[(df[k].astype(str) == v) | df["baseline"]]
    return df


def ensure_base(df: pd.DataFrame, runs_dir: str) -> pd.DataFrame:
    """Base-model rows matching the runs' protocol; evaluates (and caches) them through the run pipeline."""
    runs = df[~df["baseline"]]
    tasks = sorted({c.split("/")[1] for c in runs.columns if c.startswith("eval/")} - {"heldout"})
    if not tasks:
        return df.iloc[0:0]
    first = runs.iloc[0]
    keys = [f"eval.{k}" for k in ("limit", "num_fewshot", "apply_chat_template", "include_path")]
    if any(is_generative(t) for t in tasks):
        keys.append("eval.max_gen_toks")
    if any(is_heldout(t) for t in tasks):  # heldout_<source> items depend on these
        keys += ["data.heldout_fraction", "data.heldout_max", "eval.heldout_max_tokens"]
    if first.get("eval.split") in ("dev", "test"):  # the same items as the runs
        keys += ["eval.split", "eval.dev_fraction"]
    settings = {k: first.get(k) for k in keys}
    later = added_later(first)  # tasks added by `python -m sft_lab.evaluate`, with their own limit
    bases = []
    for model in sorted(runs["model"].unique()):
        def matching(frame, need=tuple(tasks)):
            b = frame[frame["baseline"] & (frame["model"] == model) & (frame["template"] == first["template"])]
            for k, v in settings.items():
                b = b[(b[k] if k in b else pd.Series(None, index=b.index)).map(_override_value) == _override_value(v)]
            for t in need:  # every task the runs have, whatever its metrics
                cols = [c for c in b.columns if c.startswith(f"eval/{t}/")]
                b = b[b[cols].notna().any(axis=1)] if cols else b.iloc[0:0]
            return b
        base = matching(df)
        if base.empty and later and not matching(df, [t for t in tasks if t not in later]).empty:
            base = _add_later(matching(df, [t for t in tasks if t not in later]), later, runs_dir, matching)
        elif base.empty:
            row = runs[runs["model"] == model].iloc[0]
            preset = [f"model={model}"] if (CONF_DIR / "model" / f"{model}.yaml").is_file() else []
            template = row.get("template")  # prompts of template-rendered tasks (toy_*) must match the runs'
            preset += [f"template={template}"] if template and (CONF_DIR / "template" / f"{template}.yaml").is_file() else []
            overrides = [*preset, f"model.name_or_path={row['model.name_or_path']}", "baseline=true",
                         f"eval.tasks=[{','.join(t for t in tasks if t not in later)}]", *[f"{k}={_override_value(v)}" for k, v in settings.items()],
                         "tracking=none", f"paths.runs_dir={runs_dir}", f"paths.data_dir={row['paths.data_dir']}"]
            print(f"evaluating the base model {model} once (cached in {runs_dir})", file=sys.stderr)
            out = subprocess.run([sys.executable, "-m", "sft_lab.run", *overrides], capture_output=True, text=True)
            if out.returncode != 0:
                raise tbl.TableError(f"evaluating the base model {model} failed:\n{out.stderr[-2000:]}")
            base = matching(collect(runs_dir)[0], [t for t in tasks if t not in later])
            if later:
                base = _add_later(base, later, runs_dir, matching)
        bases.append(base.iloc[:1])
    return pd.concat(bases) if bases else df.iloc[0:0]


def added_later(run: pd.Series) -> dict[str, list[str]]:
    """Tasks a run got from the re-evaluation verb: task -> the eval overrides that evaluated it."""
    protocol = json.loads(run["protocol"]) if isinstance(run.get("protocol"), str) else {}
    out = {}
    for entry in protocol.get("added") or []:
        for t in entry.get("tasks") or []:
            gen = (protocol.get("generation") or {}).get(t) or {}
            out[t] = [f"eval.limit={_override_value((protocol.get('limits') or {}).get(t))}"] + (
                [f"eval.max_gen_toks={gen['max_gen_toks']}"] if gen.get("max_gen_toks") else [])
    return out


def _add_later(base: pd.DataFrame, later: dict[str, list[str]], runs_dir: str, matching) -> pd.DataFrame:
    """The base run gets the re-evaluated tasks too, each with the runs' own settings."""
    folder = base["run_dir"].iloc[0]
    for task, overrides in later.items():
        print(f"evaluating the base model on {task} too ({', '.join(overrides)})", file=sys.stderr)
        out = subprocess.run([sys.executable, "-m", "sft_lab.evaluate", folder, f"eval.tasks=[{task}]", *overrides],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise tbl.TableError(f"evaluating the base model on {task} failed:\n{out.stderr[-2000:]}")
    return matching(collect(runs_dir)[0])


def _override_value(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "null"
    return json.dumps(v) if isinstance(v, str) and not v.replace(".", "").replace("/", "").isalnum() else str(v)
