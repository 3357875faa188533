"""IFEval (Zhou et al. 2023, arXiv 2311.07911) offline: lm-eval's own checkers on the local prompts.

The prompts are `eval/ifeval_input_data.jsonl` in paths.data_dir (541 prompts). The unit of an item is
the prompt: prompt-level metrics are 0/1 per prompt; instruction-level metrics pool a prompt's
instructions, so per item they are (followed, instructions), a ratio like bits per byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from sft_lab.errors import UserError

DATA_FILE = "eval/ifeval_input_data.jsonl"
METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


def load_docs(data_dir: str) -> list[dict]:
    path = Path(data_dir) / DATA_FILE
    if not path.is_file():
        raise UserError(f"eval.tasks has ifeval, whose prompts are {path.resolve()}, which does not exist "
                        "(set paths.data_dir, or SFT_LAB_DATA_DIR, to the folder that holds eval/ifeval_input_data.jsonl)")
    docs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            doc = json.loads(line)
            if not isinstance(doc.get("prompt"), str) or not isinstance(doc.get("instruction_id_list"), list):
                raise ValueError("no prompt or instruction_id_list")
        except (json.JSONDecodeError, ValueError, AttributeError) as e:
            raise UserError(f"{path}:{n}: not an IFEval item ({e})") from None
        docs.append(doc)
    return docs


def process(doc: dict, answer: str) -> dict:
    """lm-eval's IFEval per-item result: four metrics (two bools, two lists of bools)."""
    from sft_lab.punkt import require

    require()
    from lm_eval.tasks.ifeval.utils import process_results

    return process_results(doc, [answer])


def score(docs: list[dict], answers: list[str]) -> dict[str, float]:
    """The four IFEval metrics over prompts, aggregated as lm-eval aggregates them."""
    per_item = [process(d, a) for d, a in zip(docs, answers)]
    out = {}
    for m in METRICS:
        values = [r[m] for r in per_item]
        if m.startswith("inst_level"):
            flat = [x for v in values for x in v]
            out[m] = sum(flat) / len(flat) if flat else float("nan")
        else:
            out[m] = sum(values) / len(values) if values else float("nan")
    return out
