"""Evaluation tasks: which names exist, and the task folder each run evaluates from.

The shipped task YAMLs here are lm-eval tasks whose data paths are placeholders (__DATA_DIR__ for the
benchmark files in paths.data_dir, __TASKS_DIR__ for items a run writes itself: its held-out split,
its generation prompts and the toy tasks; __UNTIL__ and __MAX_GEN_TOKS__ for how generation stops).
`write_tasks` fills them in under <run>/tasks/, so the run folder shows exactly what was evaluated.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

from sft_lab.errors import UserError

SHIPPED_DIR = Path(__file__).resolve().parent
_PLACEHOLDER = re.compile(r"(__DATA_DIR__|__TASKS_DIR__)([^\s,}]*)")


class TaskError(UserError):
    pass


HELDOUT_PREFIX = "heldout_"  # heldout_<source>: a local instruction set's held-out split (eval.heldout=all)


GEN_PREFIX = "gen_"  # gen_<source>: generated answers on a local set's held-out prompts (those of heldout_<source>)


def is_generative(task: str) -> bool:
    """Scored on generated text: ifeval, gen (the run's own held-out prompts) and gen_<source>."""
    return task in ("ifeval", "gen") or task.startswith(GEN_PREFIX)


def is_heldout(task: str) -> bool:
    """The run's own held-out split (heldout) or a local set's (heldout_<source>): items from the data."""
    return task == "heldout" or task.startswith(HELDOUT_PREFIX)


def shipped_task_names() -> set[str]:
    return {p.stem for p in SHIPPED_DIR.glob("*.yaml")}


def user_task_names(include_path: str) -> set[str]:
    """Task, group and tag names declared in a user's lm-eval task folder."""
    import yaml

    names = set()
    for p in Path(include_path).rglob("*.yaml"):
        try:
            doc = yaml.safe_load(p.read_text())
        except Exception:  # lm-eval YAMLs may use !function tags; fall back to a line scan
            names |= {l.split(":", 1)[1].strip() for l in p.read_text().splitlines() if l.startswith("task:")}
            continue
        if isinstance(doc, dict):
            for key in ("task", "group", "tag"):
                v = doc.get(key)
                names |= {v} if isinstance(v, str) else set(v or [])
    return names


@functools.lru_cache(maxsize=1)
def builtin_task_names() -> frozenset[str]:
    """lm-eval's own task names (indexing them takes a few seconds)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def _filled(text: str, data_dir: str, tasks_dir: Path) -> str:
    dirs = {"__DATA_DIR__": Path(data_dir).resolve(), "__TASKS_DIR__": tasks_dir.resolve()}
    # A JSON string is a YAML scalar, whatever the path holds (`}`, `#`, `: `).
    return _PLACEHOLDER.sub(lambda m: json.dumps(str(dirs[m.group(1)]) + m.group(2)), text)


def check_benchmark_files(tasks: list[str], data_dir: str) -> None:
    """Each shipped benchmark the run asks for has its data file in paths.data_dir."""
    for task in tasks:
        src = SHIPPED_DIR / f"{task}.yaml"
        if not src.is_file():
            continue
        match = re.search(r"__DATA_DIR__([^\s,}]*)", src.read_text())
        if match and not (Path(data_dir) / match.group(1).lstrip("/")).is_file():
            path = Path(data_dir).resolve() / match.group(1).lstrip("/")
            raise TaskError(f"eval.tasks: task {task!r} needs {path}, which does not exist (set paths.data_dir)")


def write_tasks(tasks_dir: Path, data_dir: str, heldout_rows: list[dict[str, str]],
                render: Optional[Callable] = None, heldout_sets: Optional[dict[str, list[dict[str, str]]]] = None,
                gen_sets: Optional[dict[str, list[dict]]] = None, until: Optional[list[str]] = None,
                max_gen_toks: int = 256) -> None:
    """The shipped task YAMLs with their paths filled in, the held-out items, and the toy tasks' items.

    `render(conversation) -> (prompt, answer)` is the run's template, so toy prompts read as trained.
    `heldout_sets` maps heldout_<source> to its items; each becomes a task shaped like `heldout`.
    `gen_sets` maps each generative task (ifeval, gen, gen_<source>) to its rendered items; gen_<source>
    tasks are shaped like `gen`. `until` and `max_gen_toks` say where generation stops.
    """
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for src in SHIPPED_DIR.glob("*.yaml"):
        text = _filled(src.read_text(), data_dir, tasks_dir)
        text = text.replace("__UNTIL__", json.dumps(list(until or []))).replace("__MAX_GEN_TOKS__", str(int(max_gen_toks)))
        (tasks_dir / src.name).write_text(text)
    for utils in ("heldout_utils.py", "gen_utils.py"):
        shutil.copy(SHIPPED_DIR / utils, tasks_dir / utils)
    _write_jsonl(tasks_dir / "heldout.jsonl", heldout_rows)
    heldout_yaml = (tasks_dir / "heldout.yaml").read_text()
    for task, rows in (heldout_sets or {}).items():
        text = heldout_yaml.replace("task: heldout\n", f"task: {task}\n").replace("heldout.jsonl", f"{task}.jsonl")
        (tasks_dir / f"{task}.yaml").write_text(text)
        _write_jsonl(tasks_dir / f"{task}.jsonl", rows)
    gen_yaml = (tasks_dir / "gen.yaml").read_text()
    for task, rows in (gen_sets or {}).items():
        if task.startswith(GEN_PREFIX):
            text = gen_yaml.replace("task: gen\n", f"task: {task}\n").replace("gen.jsonl", f"{task}.jsonl")
            (tasks_dir / f"{task}.yaml").write_text(text)
        _write_jsonl(tasks_dir / f"{task}.jsonl", rows)
    if render is not None:
        from sft_lab import toy

        for task in toy.TASKS:
            rows = []
            for item in toy.eval_items(task):
                prompt, answer = render(item["conversation"])
                lead = answer[: len(answer) - len(answer.lstrip())]  # the prompt's whitespace, moved onto answers
                rows.append({"prompt": prompt, "choices": [lead + c for c in item["choices"]], "label": item["label"]})
            _write_jsonl(tasks_dir / f"toy_{task}.jsonl", rows)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
