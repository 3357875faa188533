"""The phases of one run: setup -> start -> train -> evaluate -> finish.

Each phase owns its part of the record. `setup` loads every input in memory and writes nothing, so a
bad input fails before the run folder changes; `start` writes the task folder and the first record;
`train` fills record.train; `evaluate` fills record.eval (held-out loss included) and its protocol;
`finish` sets the final status. The pipeline (skip, lock, archive) calls them in this order.
"""

from __future__ import annotations

import logging
import resource
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from sft_lab import distributed, index
from sft_lab import record as rec
from sft_lab.record import RunRecord
from sft_lab.tracking import lora_label, sample_rows

log = logging.getLogger(__name__)


def run_name(config: dict[str, Any]) -> str:
    """A readable name from the usual ablation factors; safe as one path component (index.safe_name)."""
    if config.get("baseline"):
        return index.safe_name(f"{config['model']['name']}-base")
    return index.safe_name(
        "-".join(index.safe_name(str(part), 60) for part in (config["model"]["name"], config["data"]["name"],
                                                            config["template"]["name"]))
        + f"-{lora_label(config)}-lr{config['lr']:g}-s{config['seed']}")


@dataclass
class RunContext:
    """One run's identity and how it was asked for, carried through the phases."""

    cfg: Any  # the composed config (DictConfig)
    config: dict[str, Any]  # the same, resolved, as the record keeps it
    fingerprint: str
    run_dir: Path
    group: Optional[str] = None  # the W&B group
    sweep: Optional[dict] = None  # {study, trial} for a sweep trial
    overrides: list[str] = field(default_factory=list)  # the command line's overrides
    earlier: Optional[RunRecord] = None  # a failed or killed attempt that this one resumes
    on_eval: Optional[Callable[[float, int], bool]] = None  # sees each periodic held-out loss; True stops the run


@dataclass
class Inputs:
    """Everything a run needs, loaded and checked."""

    tokenizer: Any
    model: Any
    device: str
    dtype: Any
    mixture: Any = None  # None for a base-model run that needs no data
    data: Any = None  # the tokenised mixture
    heldout_rows: Optional[list[dict[str, str]]] = None  # rendered (prompt, answer) for the held-out task
    heldout_sets: Optional[dict[str, list[dict[str, str]]]] = None  # the same for each heldout_<source> task
    gen_sets: Optional[dict[str, list[dict]]] = None  # each generative task's items, prompts rendered by the template
    stops: Any = None  # where generated answers end (templates.Stops)


# ---------------------------------------------------------------- setup


def setup(cfg) -> Inputs:
    """Load and check the data, template, tasks and model; any bad input fails here, before a record exists."""
    from sft_lab.config import heldout_sources
    from sft_lab.data import DataError, build_mixture, heldout_split
    from sft_lab.models import load_model, load_tokenizer, pick_device_and_dtype
    from sft_lab.tasks import GEN_PREFIX, HELDOUT_PREFIX, check_benchmark_files, is_generative
    from sft_lab.templates import generation_stops, render_prompt
    from sft_lab.tokens import tokenise_mixture

    check_benchmark_files(list(cfg.eval.tasks), cfg.paths.data_dir)
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)

    def render(ex) -> dict[str, str]:
        return dict(zip(("prompt", "answer"), render_prompt(ex.conversation, cfg.template, tokenizer)))

    mixture = data = None
    heldout_rows: list[dict[str, str]] = []
    if not cfg.baseline or "heldout" in cfg.eval.tasks or "gen" in cfg.eval.tasks:
        mixture = build_mixture(cfg.data, cfg.paths.data_dir, cfg.seed)
        data = tokenise_mixture(mixture, cfg.template, tokenizer, cfg.train.max_length, cfg.paths.cache_dir,
                                token_budget=cfg.data.tokens, prompt_loss=cfg.train.train_on_prompt,
                                packing=cfg.train.packing)
        heldout_rows = [render(ex) for ex in mixture.heldout]
        if not cfg.baseline and not data.train:
            raise DataError(f"train.max_length={cfg.train.max_length} leaves no answer token in any of the "
                            f"{len(mixture.train)} training examples (the prompt fills the whole length); raise "
                            "train.max_length")
        for task in ("heldout", "gen"):
            if task in cfg.eval.tasks and not heldout_rows:
                raise DataError(f"eval.tasks has {task!r}, but data={cfg.data.name!r} holds no held-out examples "
                            f"(data.heldout_fraction={cfg.data.heldout_fraction} of "
                            f"{sum(s.get('records', 0) for s in mixture.sources.values())} records). Raise "
                            f"data.heldout_fraction or drop {task} from eval.tasks.")
    model = load_model(cfg.model, tokenizer, cfg.paths.cache_dir, cfg.seed)
    device, dtype = pick_device_and_dtype(cfg.model.dtype)
    window = min(getattr(model.config, "max_position_embeddings", None) or 2048, cfg.eval.heldout_max_tokens or 1 << 30)

    def fits(ex) -> bool:  # past the model's window an item would be scored on a cut-off answer
        return len(tokenizer("".join(render(ex).values())).input_ids) <= window

    heldout_sets, gen_sets = {}, {}
    for task in [t for t in cfg.eval.tasks if t.startswith((HELDOUT_PREFIX, GEN_PREFIX))]:
        name = task.split("_", 1)[1]
        examples = heldout_split(name, heldout_sources()[name], cfg.data, cfg.paths.data_dir, keep=fits)
        if not examples:
            raise DataError(f"eval.tasks has {task!r}, but {name} holds no held-out examples at "
                            f"data.heldout_fraction={cfg.data.heldout_fraction}")
        if task.startswith(HELDOUT_PREFIX):
            heldout_sets[task] = [render(ex) for ex in examples]
        else:
            gen_sets[task] = [generation_item(ex.conversation, cfg.template, tokenizer) for ex in examples]
    if "gen" in cfg.eval.tasks:
        gen_sets["gen"] = [generation_item(ex.conversation, cfg.template, tokenizer) for ex in mixture.heldout]
    if "ifeval" in cfg.eval.tasks:
        from sft_lab.ifeval import load_docs
        from sft_lab.punkt import require
        from sft_lab.templates import generation_prompt

        require()
        gen_sets["ifeval"] = [{**doc, "rendered": generation_prompt(doc["prompt"], cfg.template, tokenizer)}
                              for doc in load_docs(cfg.paths.data_dir)]
    stops = None
    if any(is_generative(t) for t in cfg.eval.tasks):
        stops = generation_stops(cfg.template, tokenizer)
        if not stops.until:
            log.warning("%s", stops.note)
    return Inputs(tokenizer, model, device, dtype, mixture, data, heldout_rows, heldout_sets, gen_sets, stops)


def generation_item(conversation: list[dict], template, tokenizer) -> dict[str, str]:
    """A held-out conversation as a generation prompt: the prompt as trained, up to where the last answer
    starts; the reference answer; and the instruction alone, for reading."""
    from sft_lab.templates import render_prompt

    prompt, _ = render_prompt(conversation, template, tokenizer)
    user = [m for m in conversation if m["role"] == "user"]
    instruction = user[-1]["content"] + (f"\n\n{user[-1]['input']}" if user and user[-1].get("input") else "")
    return {"prompt": prompt, "reference": conversation[-1]["content"], "instruction": instruction}


# ---------------------------------------------------------------- start


def start(ctx: RunContext, inputs: Inputs) -> RunRecord:
    """The task folder, the Hydra files and the first record (status running); an earlier attempt is counted."""
    from sft_lab.templates import fingerprint_template

    cfg, config, run_dir, earlier = ctx.cfg, ctx.config, ctx.run_dir, ctx.earlier
    write_task_folder(cfg, run_dir, inputs)
    mixture, data = inputs.mixture, inputs.data
    record = RunRecord(
        status="running", fingerprint=ctx.fingerprint, run_dir=str(run_dir), config=config, name=run_name(config),
        group=ctx.group,
        data={} if data is None else {
            "fingerprint": data.key, "mixture_fingerprint": mixture.fingerprint, "tokens_from_cache": data.from_cache,
            "train_examples": len(data.train), "heldout_examples": len(data.heldout),
            "sources": {n: {**mixture.sources[n], "examples": 0, **data.sources.get(n, {})} for n in mixture.sources}},
        env={**rec.environment(f"{inputs.device} ({str(inputs.dtype).replace('torch.', '')})"),
             **distributed.layout(cfg.train.batch_size, cfg.train.grad_accum),
             # how results were computed, kept out of the fingerprint (record.HOW_NOT_WHAT)
             "switches": {f"{g}.{k}": config.get(g, {}).get(k) for g, k in sorted(rec.HOW_NOT_WHAT)}},
        started=(earlier.started if earlier else None) or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        attempts=(earlier.attempts + 1) if earlier else 1, sweep=ctx.sweep, overrides=list(ctx.overrides),
    )
    record.data["template_fingerprint"] = fingerprint_template(cfg.template, inputs.tokenizer)  # prompts as trained
    _write_hydra_files(run_dir, config, record.overrides)
    rec.write_record(run_dir, record)
    index.update(cfg.paths.runs_dir, record)
    return record


def write_task_folder(cfg, run_dir: Path, inputs: Inputs) -> None:
    """<run>/tasks: the task YAMLs and the items the run renders itself (held-out, generation, toy)."""
    from sft_lab.tasks import write_tasks
    from sft_lab.templates import render_prompt

    write_tasks(run_dir / "tasks", cfg.paths.data_dir, inputs.heldout_rows or [],
                render=lambda conv: render_prompt(conv, cfg.template, inputs.tokenizer),
                heldout_sets=inputs.heldout_sets, gen_sets=inputs.gen_sets,
                until=inputs.stops.until if inputs.stops else None, max_gen_toks=cfg.eval.max_gen_toks)


def _write_hydra_files(run_dir: Path, config: dict, overrides: list[str]) -> None:
    """<run>/.hydra/{config,overrides,hydra}.yaml, where Hydra users look for them."""
    from omegaconf import OmegaConf

    from sft_lab.files import atomic_write

    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    atomic_write(folder / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    atomic_write(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
    try:  # inside `python -m sft_lab.run`; a sweep trial composes without Hydra's runtime config
        from hydra.core.hydra_config import HydraConfig

        atomic_write(folder / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.get(), resolve=False))
    except ValueError:
        pass


# ---------------------------------------------------------------- train


@dataclass
class Fitted:
    model: Any
    result: Any = None  # sft_lab.train.Trained, when trained now
    earlier: Optional[dict] = None  # the train metrics an earlier attempt saved with its weights
    weights: Optional[Path] = None  # where those weights are
    parameters: Optional[dict] = None


def _fit(ctx: RunContext, inputs: Inputs, log_metrics: Callable) -> Fitted:
    """The model trained now, or loaded as an earlier attempt saved it."""
    from sft_lab import train as training
    from sft_lab.artifacts import load_trained, trained_result
    from sft_lab.models import add_lora, count_parameters

    cfg = ctx.cfg
    done = trained_result(ctx.run_dir)
    if done is not None:
        model, weights = load_trained(inputs.model, ctx.run_dir)
        return Fitted(model, earlier=done, weights=weights)
    model = add_lora(inputs.model, cfg.lora)
    params = count_parameters(model)
    log.info("Training %s: %s of %s parameters trainable", cfg.model.name, f"{params['trainable']:,}",
             f"{params['total']:,}")
    result = training.train(model, inputs.tokenizer, inputs.data, cfg.train, cfg.lr, cfg.seed, ctx.run_dir,
                            log_metrics, ctx.on_eval, _probe(cfg, inputs, ctx.run_dir))
    return Fitted(model, result=result, parameters=params)


def _probe(cfg, inputs: Inputs, run_dir: Path):
    """eval.every / eval.every_tokens: the learning curve's measurement (sft_lab.evaluate.curve_point)."""
    if not (cfg.eval.every or cfg.eval.every_tokens):
        return None
    from sft_lab import evaluate as evaluation
    from sft_lab.train import periodic_heldout
    from sft_lab.trainer import Probe

    heldout = periodic_heldout(inputs.data.heldout, cfg.train) if inputs.data is not None else None
    return Probe(lambda model: evaluation.curve_point(model, inputs.tokenizer, cfg.eval, run_dir / "tasks", heldout),
                 steps=cfg.eval.every, tokens=cfg.eval.every_tokens)


def train(ctx: RunContext, inputs: Inputs, record: RunRecord, log_metrics: Callable) -> tuple[Any, bool]:
    """Fills record.train and record.artifacts; returns (the model to evaluate, pruned).

    The base model is evaluated as it is. Weights saved by an earlier attempt are loaded, not retrained.
    """
    from sft_lab.artifacts import load_trained, save_trained

    if ctx.cfg.baseline:
        return inputs.model, False
    fitted = _fit(ctx, inputs, log_metrics)
    model, result = fitted.model, fitted.result
    if fitted.earlier is not None:
        record.train, record.artifacts = fitted.earlier, {"weights": str(fitted.weights)}
        log.info("Training finished in an earlier attempt: evaluating %s", fitted.weights)
        return model, False
    record.train = {**result.metrics, "parameters": fitted.parameters}
    for name, seen in result.metrics.get("trained_on", {}).items():
        record.data.setdefault("sources", {}).setdefault(name, {})["trained_on"] = seen
    if not result.pruned:
        saved = save_trained(model, inputs.tokenizer, ctx.run_dir, record.train, result.full_weights)
        record.artifacts = {"weights": str(saved)}
        if result.full_weights is not None:  # sharded: rank 0 evaluates an unsharded copy, the other ranks are done
            model, _ = load_trained(_base_model(ctx.cfg, inputs), ctx.run_dir)
    rec.write_record(ctx.run_dir, record)  # a failure in evaluation keeps what was trained
    return model, result.pruned


def train_share(ctx: RunContext, inputs: Inputs) -> None:
    """A rank other than 0 under torchrun: trains its share of each batch; rank 0 saves and records."""
    if not ctx.cfg.baseline:
        _fit(ctx, inputs, lambda metrics, step: None)


def _base_model(cfg, inputs: Inputs):
    from sft_lab.models import load_model

    return load_model(cfg.model, inputs.tokenizer, cfg.paths.cache_dir, cfg.seed)


# ---------------------------------------------------------------- evaluate


def evaluate(cfg, model, inputs: Inputs, run_dir: Path, record: RunRecord) -> None:
    """lm-eval on the run's tasks, plus the mean token loss on the held-out answers; fills record.eval.
    The adapter is folded into the model first (saved already, and the model is dropped after)."""
    from sft_lab import evaluate as evaluation
    from sft_lab.models import merged_for_eval

    model = merged_for_eval(model)

    generation = None
    if inputs.stops is not None:
        from sft_lab.templates import fingerprint_template

        generation = {"until": inputs.stops.until, "stop": inputs.stops.note,
                      "template": cfg.template.name, "template_fingerprint": fingerprint_template(cfg.template, inputs.tokenizer)}
    results, protocol, warnings = evaluation.evaluate(model, inputs.tokenizer, cfg.eval, run_dir / "tasks", run_dir,
                                                      generation)
    if "heldout" in cfg.eval.tasks and inputs.data is not None and inputs.data.heldout:
        loss = evaluation.heldout_loss(model, inputs.data.heldout, inputs.tokenizer.pad_token_id)
        results.setdefault("heldout", {})["loss"] = {"value": loss, "stderr": None}
    record.eval, record.eval_protocol = results, protocol
    from sft_lab.checks import flag_same_as_base
    from sft_lab.tasks import is_generative

    warnings += flag_same_as_base(cfg.paths.runs_dir, run_dir, record.config,
                                  [t for t in cfg.eval.tasks if is_generative(t)])
    record.warnings = [*record.warnings, *warnings]


# ---------------------------------------------------------------- finish


def finish(run_dir: Path, record: RunRecord, status: str, error: Optional[BaseException] = None) -> None:
    """The final status, end time and peak memory; checkpoints go once the results are final."""
    record.status = status
    if isinstance(error, KeyboardInterrupt):
        record.error = "interrupted (SIGTERM)" if str(error) == "SIGTERM" else "interrupted (Ctrl-C)"
    elif error is not None:
        record.error = f"{type(error).__name__}: {error}"
        record.traceback = "".join(traceback.format_exception(error))
    record.ended = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record.env["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    rec.write_record(run_dir, record)
    index.update(Path(run_dir).parent, record)
    if record.done:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def execute(ctx: RunContext, inputs: Inputs, record: RunRecord, tracker) -> RunRecord:
    """train -> evaluate -> finish, with the status a crash, a kill or a pruner leaves."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    status, error = "failed", None
    try:
        distributed.all_ok(None)  # every rank loaded its inputs (no-op for one process)
        model, pruned = train(ctx, inputs, record, tracker.log)
        distributed.barrier()  # the other ranks exit here; evaluation is rank 0's alone
        if pruned:
            status = "pruned"
            return record
        evaluate(cfg, model, inputs, run_dir, record)
        tracker.table("eval/results", ["task", "metric", "value", "stderr"],
                      [[t, m, v["value"], v["stderr"]] for t, ms in record.eval.items() for m, v in ms.items()])
        for samples in sorted((run_dir / "samples").glob("*.jsonl")):
            tracker.table(f"eval/samples/{samples.stem}", *sample_rows(samples))
        for generations in sorted((run_dir / "generations").glob("*.jsonl")):  # same shape: one row per prompt
            tracker.table(f"eval/generations/{generations.stem}", *sample_rows(generations))
        tracker.summary(_summary(record))
        tracker.weights(record.artifacts.get("weights"), record.name)
        status = "finished"
        log.info("Finished: %s", run_dir / rec.RECORD)
        return record
    except KeyboardInterrupt as e:
        status, error = "interrupted", e
        raise
    except BaseException as e:
        error = e
        raise
    finally:
        finish(run_dir, record, status, error)
        tracker.finish(status)


def _summary(record: RunRecord) -> dict:
    def flat(field: str) -> dict:
        return {t: {m: v[field] for m, v in ms.items() if v[field] is not None} for t, ms in record.eval.items()}

    def scalars(d: dict) -> dict:
        return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    return {"eval": flat("value"), "eval_stderr": flat("stderr"), "train": scalars(record.train or {}),
            "data": {"sources": {n: scalars(s) for n, s in record.data.get("sources", {}).items()},
                     "train_examples": record.data.get("train_examples")}}
