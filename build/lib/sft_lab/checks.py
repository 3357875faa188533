"""Integrity checks on generated answers: a trained run that answers exactly as the base model did.

Greedy answers of a trained model that equal the base model's on every prompt mean that the adapter was
probably never applied (a failure seen in other stacks), or that training changed nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def answers(run_dir: str | Path, task: str) -> dict[tuple, str]:
    """(doc_id, prompt_hash) -> answer, from <run>/generations/<task>.jsonl; empty when there is none."""
    path = Path(run_dir) / "generations" / f"{task}.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out[(row.get("doc_id"), row.get("prompt_hash"))] = row.get("answer")
    return out


def same_as_base(run_dir: str | Path, base_dir: str | Path, task: str) -> Optional[bool]:
    """True when every answer equals the base model's on the same prompts; None when they share no prompt."""
    mine, base = answers(run_dir, task), answers(base_dir, task)
    shared = set(mine) & set(base)
    if not shared:
        return None
    return all(mine[k] == base[k] for k in shared)


def base_runs(runs_dir: str | Path, config: dict) -> list[Path]:
    """Finished base-model runs of the same model in a runs folder."""
    out = []
    for path in sorted(Path(runs_dir).glob("*/record.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        cfg = rec.get("config") or {}
        if (rec.get("status") == "finished" and cfg.get("baseline")
                and (cfg.get("model") or {}).get("name_or_path") == (config.get("model") or {}).get("name_or_path")):
            out.append(path.parent)
    return out


def flag_same_as_base(runs_dir: str | Path, run_dir: str | Path, config: dict, tasks: list[str]) -> list[str]:
    """Warnings for the generative tasks on which this trained run answers exactly as a base run did."""
    if config.get("baseline"):
        return []
    out = []
    for base in base_runs(runs_dir, config):
        for task in tasks:
            if same_as_base(run_dir, base, task):
                out.append(f"{task}: every greedy answer equals the base model's ({base.name}): was the adapter "
                           "applied? (or training changed nothing)")
    return sorted(set(out))
