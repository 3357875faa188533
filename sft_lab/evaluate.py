"""lm-eval on the trained model in memory -> metrics, per-item results and the eval protocol.

The shipped task YAMLs (sft_lab/tasks/) point at the benchmark files in paths.data_dir; they are
written, with that path filled in, into <run>/tasks/ next to the held-out task built from the run's
own held-out split, so the run folder shows exactly what was evaluated.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from sft_lab.config import SHIPPED_TASKS_DIR, shipped_task_names
from sft_lab.errors import UserError
from sft_lab.record import jsonable

log = logging.getLogger(__name__)

HELDOUT_YAML = """task: heldout
dataset_path: json
dataset_kwargs: {data_files: {test: %s}}
test_split: test
output_type: loglikelihood
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
target_delimiter: ""
process_results: !function heldout_utils.process_results
metric_list:
  - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}
  - {metric: acc, aggregation: mean, higher_is_better: true}
metadata: {version: 1.0}
"""


class EvalError(UserError):
    pass


@functools.lru_cache(maxsize=1)
def builtin_task_names() -> frozenset[str]:
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def write_tasks(tasks_dir: Path, data_dir: str, heldout_rows: list[dict[str, str]], render=None) -> None:
    """Shipped task YAMLs with the data path filled in, the held-out task, and the toy tasks' items.

    `render(conversation) -> (prompt, answer)` is the run's template, so toy prompts read as trained.
    """
    tasks_dir.mkdir(parents=True, exist_ok=True)
    dirs = {"__DATA_DIR__": Path(data_dir).resolve(), "__TASKS_DIR__": tasks_dir.resolve()}

    def fill(match: re.Match) -> str:  # a JSON string is a YAML scalar, whatever the path holds
        return json.dumps(str(dirs[match.group(1)]) + match.group(2))

    for src in SHIPPED_TASKS_DIR.glob("*.yaml"):
        (tasks_dir / src.name).write_text(re.sub(r"(__DATA_DIR__|__TASKS_DIR__)([^\s,}]*)", fill, src.read_text()))
    shutil.copy(SHIPPED_TASKS_DIR / "heldout_utils.py", tasks_dir / "heldout_utils.py")
    _write_jsonl(tasks_dir / "heldout.jsonl", heldout_rows)
    (tasks_dir / "heldout.yaml").write_text(HELDOUT_YAML % json.dumps(str((tasks_dir / "heldout.jsonl").resolve())))
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


def check_benchmark_files(tasks: list[str], tasks_dir: Path) -> None:
    import yaml

    for task in tasks:
        path = tasks_dir / f"{task}.yaml"
        if task == "heldout" or not path.is_file():
            continue
        data_file = yaml.safe_load(path.read_text())["dataset_kwargs"]["data_files"]["test"]
        if not Path(data_file).is_file():
            raise EvalError(f"eval.tasks: task {task!r} needs {data_file}, which does not exist (set paths.data_dir)")


def evaluate(model, tokenizer, eval_cfg, tasks_dir: Path, run_dir: Path) -> tuple[dict, dict]:
    """Returns (metrics: task -> metric -> {value, stderr}, protocol)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = list(eval_cfg.tasks)
    if tasks == []:
        return {}, {"tasks": []}
    check_benchmark_files(tasks, tasks_dir)
    include = [str(tasks_dir)] + ([str(Path(eval_cfg.include_path).resolve())] if eval_cfg.include_path else [])
    ours = shipped_task_names()
    needs_builtin = any(t not in ours for t in tasks) and not eval_cfg.include_path
    manager = TaskManager(include_path=include, include_defaults=needs_builtin or bool(eval_cfg.include_path))
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=eval_cfg.batch_size)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=eval_cfg.num_fewshot, limit=eval_cfg.limit,
        task_manager=manager, log_samples=eval_cfg.log_samples, apply_chat_template=eval_cfg.apply_chat_template,
        bootstrap_iters=1000, random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234,
    )
    metrics = _metrics(results["results"])
    if eval_cfg.log_samples:
        _write_samples(results.get("samples", {}), run_dir / "samples")
    protocol = {
        "tasks": tasks,
        "task_versions": {t: results.get("versions", {}).get(t) for t in metrics},
        "n_shot": {t: results.get("n-shot", {}).get(t) for t in metrics},
        "limit": eval_cfg.limit,
        "include_path": str(Path(eval_cfg.include_path).resolve()) if eval_cfg.include_path else None,
        "apply_chat_template": eval_cfg.apply_chat_template,
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else _version("lm_eval"),
        "task_hashes": results.get("task_hashes", {}),
    }
    return metrics, protocol


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _metrics(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for task, values in results.items():
        for key, value in values.items():
            name, _, filt = key.partition(",")
            if name.endswith("_stderr") or name == "alias" or not filt:
                continue
            stderr = values.get(f"{name}_stderr,{filt}")
            out.setdefault(task, {})[name] = {
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            }
    return out


def _write_samples(samples: dict[str, list[dict]], folder: Path) -> None:
    """Per-item results (doc id, target, each metric) for paired tests across runs."""
    folder.mkdir(parents=True, exist_ok=True)
    for task, rows in samples.items():
        with open(folder / f"{task}.jsonl", "w") as fh:
            for row in rows:
                keep = {k: row[k] for k in ("doc_id", "doc_hash", "prompt_hash", "target") if k in row}
                keep.update({k: v for k, v in row.items() if k in ("acc", "acc_norm", "bits_per_byte")})
                fh.write(json.dumps(keep, default=jsonable) + "\n")

