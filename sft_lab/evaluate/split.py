"""Dev and test items: each task's documents split by a hash of the document, the same for every run.

Tuning reads dev items and final results read test items, so a selected configuration is never scored on
the items it was selected on (the winner's curse). `eval.split=all` keeps every item.
"""

from __future__ import annotations

import hashlib
import json

from sft_lab.errors import UserError

# A split with fewer items than this cannot carry a paired test over items (sft_lab/analysis/stats.py).
MIN_ITEMS = 10


class SplitError(UserError):
    pass


def side(doc: dict, dev_fraction: float) -> str:
    """'dev' or 'test' for one document: a stable hash of its content, not of its position."""
    blob = json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False).encode()
    u = int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") / 2**64
    return "dev" if u < dev_fraction else "test"


def _eval_split(task) -> str | None:
    """The dataset split a task scores (lm-eval: its test split if it has one, else its validation split)."""
    cfg = getattr(task, "config", None)
    for name in (getattr(cfg, "test_split", None), getattr(cfg, "validation_split", None)):
        if name:
            return name
    return None


def restrict(task, name: str, split: str, dev_fraction: float) -> int:
    """Keep the task's `split` items only (in place); returns how many are left. A task whose items cannot be
    reached, or a split left too small for the test, is refused by name."""
    where = _eval_split(task)
    dataset = getattr(task, "dataset", None)
    if where is None or dataset is None or where not in dataset:
        raise SplitError(f"eval.split={split}: task {name!r} has no evaluation split sft-lab can divide; "
                         "use eval.split=all for it")
    before = len(dataset[where])
    dataset[where] = dataset[where].filter(lambda doc: side(doc, dev_fraction) == split)
    n = len(dataset[where])
    if n < MIN_ITEMS:
        raise SplitError(f"eval.split={split}: task {name!r} keeps {n} of its {before} items, fewer than the "
                         f"{MIN_ITEMS} a test over items needs; use eval.split=all for it, or a larger task")
    return n


def splitting_manager(manager, split: str, dev_fraction: float, counts: dict):
    """`manager` whose loaded tasks keep only their `split` items; `counts` gets each task's item count."""
    if split == "all":
        return manager
    load = manager.load

    def load_split(tasks):
        loaded = load(tasks)
        for name, task in loaded["tasks"].items():
            counts[str(name)] = restrict(task, str(name), split, dev_fraction)
        return loaded

    manager.load = load_split
    return manager
