"""Toy instruction tasks a tiny model learns in a minute: say the first, or the last, of three words.

Made here from a fixed seed, no download. Each task is a data source (`path: toy://first`) and a
multiple-choice lm-eval task (`toy_first`) whose items are word lists no toy task trains on.
The words come in classes: `first` asks for the first of (A, A, C, C), `last` for the last of
(C, C, B, B), C being filler words. A 2-layer model learns which class answers within seconds, which
takes a choice from 1/3 to 1/2 right; the positional rule comes slower and varies with the seed.
So training on one task moves its own eval far more than the other's (a known effect), and seeds
disagree on items as they do in real fine-tuning: real runs in seconds for testing the statistics.
"""

from __future__ import annotations

import random

from sft_lab.errors import UserError

# Words that SmolLM2's tokenizer keeps as one token after a newline.
WORDS = ("apple river stone cloud chair horse window forest button castle summer winter orange purple yellow "
         "green black white brown table flower paper doctor market planet camera wallet bridge ocean cookie "
         "bread water sugar salt").split()
CLASSES = {"A": WORDS[:8], "B": WORDS[8:16], "C": WORDS[16:]}
TASKS = {"first": ("Say the first word.", 0, "AACC"), "last": ("Say the last word.", 3, "CCBB")}
TRAIN_EXAMPLES = 2000
EVAL_ITEMS = 200
SCHEME = "toy://"


class ToyError(UserError):
    pass


def _task(name: str) -> tuple[str, int, str]:
    if name not in TASKS:
        raise ToyError(f"unknown toy task {name!r}; toy tasks: {', '.join(TASKS)}")
    return TASKS[name]


def _lists(pattern: str, seed: int, n: int, exclude: frozenset = frozenset()) -> list[tuple[str, ...]]:
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    for _ in range(100 * n):
        if len(out) == n:
            break
        t = tuple(rng.choice(CLASSES[c]) for c in pattern)
        if len(set(t)) < len(t):
            continue
        if t not in seen:
            seen.add(t)
            out.append(t)
    if len(out) < n:
        raise ToyError(f"pattern {pattern}: fewer than {n} distinct word lists")
    return out


def _train_lists(task: str) -> list[tuple[str, ...]]:
    return _lists(TASKS[task][2], 1000 + list(TASKS).index(task), TRAIN_EXAMPLES)


def records(task: str) -> list[dict[str, str]]:
    """The task's training source, in Alpaca form (instruction, input, output)."""
    instruction, pick, _ = _task(task)
    return [{"instruction": instruction, "input": "\n".join(t), "output": t[pick]} for t in _train_lists(task)]


def eval_items(task: str) -> list[dict]:
    """Multiple-choice items on word lists that no toy task trains on: (conversation, choices, label)."""
    instruction, pick, pattern = _task(task)
    trained = frozenset(t for name in TASKS for t in _train_lists(name))
    return [{"conversation": [{"role": "user", "content": instruction, "input": "\n".join(t)},
                              {"role": "assistant", "content": t[pick]}],
             "choices": list(t), "label": pick} for t in _lists(pattern, 7, EVAL_ITEMS, exclude=trained)]
