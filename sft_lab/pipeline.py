"""One run, start to end: config -> data -> tokens -> model -> train -> evaluate -> record.

Used by `python -m sft_lab.run` (Hydra) and by the sweep driver alike, so both leave the same
record and the same W&B run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig

from sft_lab import record as rec
from sft_lab.config import ConfigError, to_container, validate

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft asks transformers; not ours to fix


def run_name(config: dict[str, Any]) -> str:
    """A readable name from the usual ablation factors."""
    if config.get("baseline"):
        return f"{config['model']['name']}-base"
    lora = f"r{config['lora']['r']}" if config["lora"]["r"] else "full"
    return f"{config['model']['name']}-{config['data']['name']}-{config['template']['name']}-{lora}-lr{config['lr']:g}-s{config['seed']}"


def run(cfg: DictConfig, group: Optional[str] = None, extra: Optional[dict[str, Any]] = None,
        on_eval: Optional[Callable[[float, int], bool]] = None) -> dict[str, Any]:
    """Run one config; returns its record. A finished record is returned as is unless force=true."""
    validate(cfg)
    config = to_container(cfg)
    fp = rec.fingerprint(config)
    run_dir = rec.run_dir_for(cfg.paths.runs_dir, fp)
    try:
        existing = rec.read_record(run_dir)
    except rec.CorruptRecord:
        if not cfg.force:
            raise
        existing = {"status": "corrupt"}
    if existing and existing.get("status") in ("finished", "pruned") and not cfg.force:
        log.info("Already %s: %s (force=true re-runs it)", existing["status"], run_dir / rec.RECORD)
        return existing

    made_here = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"paths.runs_dir={cfg.paths.runs_dir!r}: cannot write the run folder {run_dir} "
                          f"({type(e).__name__}: {e.strerror or e})") from None
    with rec.run_lock(run_dir):
        # force=true: the old results move aside only once the new run's inputs have loaded, and come back
        # if it fails before its first record, so a bad override never costs a finished run.
        to_archive = bool(existing) and existing.get("status") in ("finished", "pruned", "corrupt")
        try:
            with _log_to(run_dir / "run.log"):
                earlier = None if to_archive or not existing else existing  # a failed or killed attempt
                return _run_locked(cfg, config, fp, run_dir, group, extra or {}, on_eval, to_archive, earlier)
        finally:
            if made_here and not (run_dir / rec.RECORD).exists():  # failed on its inputs: leave no half-made folder
                shutil.rmtree(run_dir, ignore_errors=True)


def _run_locked(cfg, config, fp, run_dir: Path, group, extra, on_eval, to_archive: bool = False,
                earlier: Optional[dict] = None) -> dict[str, Any]:
    from sft_lab.data import build_mixture
    from sft_lab.evaluate import write_tasks
    from sft_lab.models import load_model, load_tokenizer, pick_device_and_dtype
    from sft_lab.templates import render_prompt
    from sft_lab.tokens import tokenise_mixture

    # ---- inputs: any bad data, template or model fails here, before a record exists
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    mixture, data, heldout_rows = None, None, []
    if not cfg.baseline or "heldout" in cfg.eval.tasks:
        mixture = build_mixture(cfg.data, cfg.paths.data_dir, cfg.seed)
        data = tokenise_mixture(mixture, cfg.template, tokenizer, cfg.train.max_length, cfg.paths.cache_dir,
                                token_budget=cfg.data.tokens)
        heldout_rows = [dict(zip(("prompt", "answer"), render_prompt(ex.conversation, cfg.template, tokenizer)))
                        for ex in mixture.heldout]
        if not cfg.baseline and not data.train:
            from sft_lab.data import DataError

            raise DataError(f"train.max_length={cfg.train.max_length} leaves no answer token in any of the "
                            f"{len(mixture.train)} training examples (the prompt fills the whole length); raise "
                            "train.max_length")
        if "heldout" in cfg.eval.tasks and not heldout_rows:
            from sft_lab.data import DataError

            raise DataError(f"eval.tasks has 'heldout', but data={cfg.data.name!r} holds no held-out examples "
                            f"(data.heldout_fraction={cfg.data.heldout_fraction} of "
                            f"{sum(s.get('records', 0) for s in mixture.sources.values())} records). Raise "
                            "data.heldout_fraction or drop heldout from eval.tasks.")
    archived = rec.archive(run_dir) if to_archive else None
    try:
        write_tasks(run_dir / "tasks", cfg.paths.data_dir, heldout_rows,
                    render=lambda conv: render_prompt(conv, cfg.template, tokenizer))
        from sft_lab.evaluate import check_benchmark_files

        check_benchmark_files(list(cfg.eval.tasks), run_dir / "tasks")
        model = load_model(cfg.model, tokenizer, cfg.paths.cache_dir, cfg.seed)
        device, dtype = pick_device_and_dtype(cfg.model.dtype)
    except BaseException:
        if archived:
            rec.restore(run_dir, archived)
        raise
    if archived:
        log.info("force=true: archived the earlier run to %s", archived)

    record: dict[str, Any] = {
        "status": "running", "fingerprint": fp, "run_dir": str(run_dir), "config": config,
        "name": run_name(config), "group": group,
        "data": {} if data is None else {
            "fingerprint": data.key, "mixture_fingerprint": mixture.fingerprint, "tokens_from_cache": data.from_cache,
            "train_examples": len(data.train), "heldout_examples": len(data.heldout),
            "sources": {n: {**mixture.sources[n], "examples": 0, **data.sources.get(n, {})} for n in mixture.sources}},
        "env": rec.environment(f"{device} ({str(dtype).replace('torch.', '')})"),
        "started": (earlier or {}).get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "attempts": int((earlier or {}).get("attempts", 1 if earlier else 0)) + 1, **extra,
    }
    rec.write_record(run_dir, record)
    from sft_lab.tracking import start_tracker

    tracker = start_tracker(cfg.tracking, record["name"], group, config, run_dir, cfg.paths.runs_dir)
    record["wandb_run_id"] = tracker.run_id
    try:
        _train_and_evaluate(cfg, model, tokenizer, data, run_dir, tracker, on_eval, record)
        record["status"] = "finished"
        for name, seen in record["train"].get("trained_on", {}).items():
            record["data"]["sources"].setdefault(name, {})["trained_on"] = seen
        tracker.summary({"eval": _flat_values(record["eval"]), "eval_stderr": _flat_values(record["eval"], "stderr"),
                         "train": _scalars(record["train"]),
                         "data": {"sources": {n: _scalars(s) for n, s in record["data"].get("sources", {}).items()},
                                  "train_examples": record["data"].get("train_examples")}})
        log.info("Finished: %s", run_dir / rec.RECORD)
        return record
    except BaseException as e:
        from sft_lab.train import TrainingStopped

        if isinstance(e, TrainingStopped):
            record.update(status="pruned", train=e.args[0])
            raise
        if isinstance(e, KeyboardInterrupt):
            record.update(status="interrupted", error="interrupted (Ctrl-C)")
            raise
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    finally:
        import resource

        record["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record["env"]["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        rec.write_record(run_dir, record)
        if record["status"] in ("finished", "pruned"):  # the record holds the results now: checkpoints can go
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        tracker.finish(failed=record["status"] == "failed")


def _train_and_evaluate(cfg, model, tokenizer, data, run_dir, tracker, on_eval, record: dict) -> None:
    """Fills record["train"], then record["eval"] and record["eval_protocol"]; the record is written
    once training ends, so a failure in evaluation keeps what was trained (a relaunch evaluates it)."""
    from sft_lab.evaluate import evaluate
    from sft_lab.models import add_lora, count_parameters
    from sft_lab.train import load_trained, save_trained, train, trained_result

    # ---- train (the baseline evaluates the base model as it is)
    metrics, saved = {}, None
    if not cfg.baseline:
        done = trained_result(run_dir)
        if done is not None:
            model, saved = load_trained(model, run_dir)
            metrics = done
            log.info("Training finished in an earlier attempt: evaluating %s", saved)
        else:
            model = add_lora(model, cfg.lora)
            params = count_parameters(model)
            log.info("Training %s: %s of %s parameters trainable", cfg.model.name, f"{params['trainable']:,}",
                     f"{params['total']:,}")
            metrics = train(model, tokenizer, data, cfg.train, cfg.lr, cfg.seed, run_dir, tracker.log, on_eval)
            metrics["parameters"] = params
            saved = save_trained(model, tokenizer, run_dir, metrics)
    record["train"] = metrics
    record["artifacts"] = {"weights": str(saved) if saved else None}
    rec.write_record(run_dir, record)
    # ---- evaluate
    results, protocol = evaluate(model, tokenizer, cfg.eval, run_dir / "tasks", run_dir)
    if metrics.get("heldout_loss") is not None:
        results.setdefault("heldout", {})["loss"] = {"value": metrics["heldout_loss"], "stderr": None}
    tracker.table("eval/results", ["task", "metric", "value", "stderr"],
                  [[t, m, v["value"], v["stderr"]] for t, ms in results.items() for m, v in ms.items()])
    record.update(eval=results, eval_protocol=protocol)


def _flat_values(results: dict, field: str = "value") -> dict:
    return {t: {m: v[field] for m, v in ms.items() if v[field] is not None} for t, ms in results.items()}


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class _log_to:
    """Copy this package's and transformers' log lines into the run folder while the run lasts."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.loggers = [logging.getLogger(n) for n in ("sft_lab", "transformers", "lm_eval")]
        for lg in self.loggers:
            lg.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        for lg in self.loggers:
            lg.removeHandler(self.handler)
        self.handler.close()
        return False
