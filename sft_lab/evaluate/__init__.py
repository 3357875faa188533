"""lm-eval on the trained model in memory -> metrics, per-item results and the eval protocol.

The tasks come from the run's task folder, written by `sft_lab.tasks.write_tasks`.
As a command, `python -m sft_lab.evaluate RUNS_DIR 'eval.tasks=[ifeval]'` evaluates finished runs again
without training (sft_lab/reevaluate.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from sft_lab.record import jsonable
from sft_lab.evaluate.split import splitting_manager
from sft_lab.tasks import GEN_PREFIX, HELDOUT_PREFIX, is_generative, shipped_task_names

log = logging.getLogger(__name__)


class _Repeats(logging.Filter):
    """lm-eval warnings every run repeats that say nothing about this run."""

    NOISE = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model",
             "Overwriting default num_fewshot")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOISE)


for _name in ("lm_eval.models.huggingface", "lm_eval.evaluator"):
    logging.getLogger(_name).addFilter(_Repeats())

def quiet_git_hash() -> str | None:
    """lm-eval's git lookup, without the "fatal: not a git repository" it prints outside a checkout."""
    from sft_lab.record import git_state

    return git_state().get("git_sha")


def _quiet_lm_eval() -> None:
    import lm_eval.evaluator

    lm_eval.evaluator.get_git_commit_hash = quiet_git_hash


ITEM_METRICS = ("acc", "acc_norm", "bits_per_byte", "rougeL", "words", "stopped", "prompt_level_strict_acc",
                "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


def evaluate(model, tokenizer, eval_cfg, tasks_dir: Path, run_dir: Path, generation: Optional[dict] = None
             ) -> tuple[dict, dict, list[str]]:
    """Returns (metrics: task -> metric -> {value, stderr}, protocol, warnings).

    `generation`: how generative tasks were prompted and stopped ({until, stop, template_fingerprint}),
    recorded per generative task with max_gen_toks and the decoding."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()

    tasks = list(eval_cfg.tasks)
    if tasks == []:
        return {}, {"tasks": []}, []
    generative = [t for t in tasks if is_generative(t)]
    log_samples = eval_cfg.log_samples or bool(generative)  # generations are always kept
    include = [str(tasks_dir)] + ([str(Path(eval_cfg.include_path).resolve())] if eval_cfg.include_path else [])
    ours = shipped_task_names()
    needs_builtin = any(t not in ours and not t.startswith((HELDOUT_PREFIX, GEN_PREFIX)) for t in tasks) and not eval_cfg.include_path
    split, items = eval_cfg.get("split", "all"), {}
    manager = splitting_manager(TaskManager(include_path=include, include_defaults=needs_builtin or bool(eval_cfg.include_path)),
                                split, eval_cfg.get("dev_fraction", 0.5), items)
    model.eval()
    from sft_lab.generate import EvalLM

    scorer = HFLM if eval_cfg.get("scorer", "sft_lab") == "hf" else EvalLM  # hf: lm-eval's own, to compare
    lm = scorer(pretrained=model, tokenizer=tokenizer, batch_size=eval_cfg.batch_size or "auto")
    lm.gen_batch_size = eval_cfg.gen_batch_size
    from lm_eval.loggers import EvaluationTracker

    lm_eval_tracker = EvaluationTracker(output_path=str(run_dir / "lm_eval"))
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, evaluation_tracker=lm_eval_tracker, num_fewshot=eval_cfg.num_fewshot, limit=eval_cfg.limit,
        task_manager=manager, log_samples=log_samples, apply_chat_template=eval_cfg.apply_chat_template,
        bootstrap_iters=1000, random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234,
    )
    metrics = _metrics(results["results"])
    samples = results.pop("samples", {}) if log_samples else {}
    warnings = []
    for task in generative:
        warnings += _generations(task, samples.get(task, []), getattr(lm, "answers", {}), eval_cfg.max_gen_toks,
                                 metrics.setdefault(task, {}), run_dir / "generations")
    if log_samples:
        _write_samples(samples, run_dir / "samples")
    # lm-eval's own files, as its CLI writes them: results_<time>.json and samples_<task>_<time>.jsonl
    lm_eval_tracker.general_config_tracker.model_name_sanitized = "model"  # not the in-memory model's repr
    lm_eval_tracker.save_results_aggregated(results=results, samples=samples or None)  # adds task_hashes
    for task, rows in samples.items():
        lm_eval_tracker.save_results_samples(task_name=task, samples=rows)
    protocol = {
        "tasks": tasks,
        "task_versions": {t: results.get("versions", {}).get(t) for t in metrics},
        "n_shot": {t: results.get("n-shot", {}).get(t) for t in metrics},
        "limit": eval_cfg.limit,
        "include_path": str(Path(eval_cfg.include_path).resolve()) if eval_cfg.include_path else None,
        "apply_chat_template": eval_cfg.apply_chat_template,
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else _version("lm_eval"),
        "task_hashes": results.get("task_hashes", {}),
        "limits": {t: eval_cfg.limit for t in metrics},
        # eval.split: which items (sft_lab/evaluate/split.py), and how many each task kept before the limit
        **({"split": split, "dev_fraction": eval_cfg.get("dev_fraction", 0.5), "split_items": items}
           if split != "all" else {}),
        "generation": {t: {"max_gen_toks": eval_cfg.max_gen_toks, "decoding": "greedy", **(generation or {})}
                       for t in generative},
    }
    return metrics, protocol, warnings


def curve_tasks(eval_cfg) -> list[str]:
    """eval.every_tasks, or the run's benchmarks: eval.tasks less the generative and held-out ones."""
    if eval_cfg.get("every_tasks") is not None:
        return list(eval_cfg.every_tasks)
    return [t for t in eval_cfg.tasks if not is_generative(t) and t != "heldout" and not t.startswith(HELDOUT_PREFIX)]


def curve_point(model, tokenizer, eval_cfg, tasks_dir: Path, heldout: Optional[list]) -> dict[str, float]:
    """One point of eval.every's learning curve: the held-out loss and eval.every_limit items of each curve
    task (on eval.split), for the model as it is mid-training. lm-eval's files go to a temporary folder."""
    import tempfile

    from omegaconf import OmegaConf

    point = {}
    if heldout:
        point["heldout/loss"] = heldout_loss(model, heldout, tokenizer.pad_token_id)
    tasks = curve_tasks(eval_cfg)
    if tasks:
        cfg = OmegaConf.merge(eval_cfg, {"tasks": tasks, "limit": eval_cfg.every_limit, "log_samples": False})
        with tempfile.TemporaryDirectory(prefix="sft-lab-curve-") as tmp:
            metrics, _, _ = evaluate(model, tokenizer, cfg, tasks_dir, Path(tmp))
        point.update({f"{t}/{m}": v["value"] for t, ms in metrics.items() for m, v in ms.items()})
    return point


HELDOUT_TOKENS = {"cpu": 1024, "cuda": 16384}  # tokens a held-out-loss batch holds, by device (cuda: not measured)


def heldout_loss(model, examples: list[dict], pad_token_id: int, tokens_per_batch: int | None = None) -> float:
    """Mean cross-entropy per answer token over the tokenised held-out examples (as trained: same
    template, same mask), in batches of similar length (HELDOUT_TOKENS by device); the LM head runs on the
    answer tokens only."""
    import torch

    from sft_lab.cpu.loss import answer_loss
    from sft_lab.tokens import Collator

    collate = Collator(pad_token_id)
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    device = next(model.parameters()).device
    tokens_per_batch = tokens_per_batch or HELDOUT_TOKENS.get(device.type, HELDOUT_TOKENS["cuda"])
    head = model.get_output_embeddings()
    total, tokens, start = 0.0, 0, 0
    model.eval()
    with torch.inference_mode():
        while start < len(order):  # the longest example of a batch comes first
            size = max(1, tokens_per_batch // max(len(examples[order[start]]["input_ids"]), 1))
            batch = collate([examples[i] for i in order[start:start + size]])
            start += size
            inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
            loss, n = answer_loss(model, head, inputs, batch["labels"].to(device))
            total, tokens = total + loss.item(), tokens + int(n)
    return total / tokens if tokens else float("nan")


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
                keep.update({k: v for k, v in row.items() if k in ITEM_METRICS})
                fh.write(json.dumps(keep, default=jsonable) + "\n")


def _context(arguments) -> Optional[str]:
    """The prompt of a generate_until sample: in memory [(context, gen_kwargs)], in lm-eval's files
    {"gen_args_0": {"arg_0": context, ...}}."""
    if isinstance(arguments, dict):
        return (arguments.get("gen_args_0") or {}).get("arg_0")
    if isinstance(arguments, (list, tuple)) and arguments:
        first = arguments[0]
        return first[0] if isinstance(first, (list, tuple)) else first if isinstance(first, str) else None
    return None


def _generations(task: str, rows: list[dict], answers: dict, max_gen_toks: int, metrics: dict, folder: Path
                 ) -> list[str]:
    """generations/<task>.jsonl (prompt, answer, reference, per-item metrics), the per-item `stopped`
    (from the generator: the answer ended at end of turn or EOS before max_gen_toks) and its mean, and
    warnings for answers that are all empty or all cut at the limit."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    stopped = []
    with open(folder / f"{task}.jsonl", "w") as fh:
        for row in rows:
            doc = row.get("doc", {})
            prompt = _context(row.get("arguments"))
            answer = (row.get("filtered_resps") or [""])[0]
            generated = answers.get(prompt)
            if generated is not None:
                row["stopped"] = int(generated.stopped)
                stopped.append(generated.stopped)
            item = {"doc_id": row.get("doc_id"), "doc_hash": row.get("doc_hash"), "prompt_hash": row.get("prompt_hash"),
                    "prompt": prompt, "instruction": doc.get("instruction", doc.get("prompt")), "answer": answer,
                    "reference": doc.get("reference"), "answer_tokens": generated.tokens if generated else None,
                    **{k: row[k] for k in ITEM_METRICS if k in row}}
            fh.write(json.dumps(item, default=jsonable, ensure_ascii=False) + "\n")
    if stopped:
        x = np.asarray(stopped, float)
        metrics["stopped"] = {"value": float(x.mean()), "stderr": float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None}
    warnings = []
    answers_text = [(r.get("filtered_resps") or [""])[0] for r in rows]
    if rows and all(not a.strip() for a in answers_text):
        warnings.append(f"{task}: every one of the {len(rows)} answers is empty")
    if stopped and not any(stopped):
        warnings.append(f"{task}: every one of the {len(stopped)} answers ran to eval.max_gen_toks={max_gen_toks} "
                        "without stopping (no end of turn or EOS): raise eval.max_gen_toks, or check the template")
    for w in warnings:
        log.warning("%s", w)
    return warnings
