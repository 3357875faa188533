"""transformers Trainer on the tokenised data -> adapter (or full model) + train metrics.

Arguments from train_cfg -> CountingTrainer (sft_lab.trainer) with the CPU fast path (sft_lab.cpu) -> metrics.
Checkpoints go to <run>/checkpoints every train.save_steps; a re-launched run resumes from the last complete
one. `on_eval` lets a caller (the sweep's pruner) see each held-out loss and stop the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from sft_lab import distributed

log = logging.getLogger(__name__)


@dataclass
class Trained:
    metrics: dict[str, Any]
    pruned: bool = False  # on_eval asked to stop (a pruned sweep trial)
    full_weights: Optional[dict] = None  # sharded (FSDP, ZeRO): the gathered weights (rank 0), as the model cannot save


def periodic_heldout(heldout: list, train_cfg) -> Optional[list]:
    """The held-out examples for the every-eval_steps loss: all, or eval_examples spread over the split."""
    n = train_cfg.get("eval_examples", 0)
    if not heldout:
        return None
    if 0 < n < len(heldout):
        return [heldout[i * len(heldout) // n] for i in range(n)]
    return heldout


def micro_batch_size(train_cfg, device_type: str, processes: int = 1) -> Optional[int]:
    """Rows per forward pass: train.micro_batch_size; if null, None on CPU in one process (the batch runs in
    passes of about PASS_TOKENS tokens, sft_lab.cpu.passes), 2 on CPU across processes (an even batch), or the
    whole batch on a GPU."""
    if train_cfg.get("micro_batch_size"):
        return int(train_cfg.micro_batch_size)
    if device_type == "cpu" and processes == 1:
        return None
    return 2 if device_type == "cpu" and train_cfg.batch_size % 2 == 0 else train_cfg.batch_size


def arguments(train_cfg, lr: float, seed: int, ckpt_dir: Path, rows: int, dtype, periodic: bool, epochs=None):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir),
        max_steps=train_cfg.max_steps or -1,  # -1: train.epochs (or the token budget's epochs) decides
        num_train_epochs=epochs or train_cfg.epochs or 1,
        optim=train_cfg.optimizer,
        neftune_noise_alpha=train_cfg.neftune_alpha,
        per_device_train_batch_size=rows,
        per_device_eval_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.grad_accum * (train_cfg.batch_size // rows),
        learning_rate=lr,
        lr_scheduler_type=train_cfg.schedule,
        warmup_steps=train_cfg.warmup_steps,
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm,
        logging_steps=train_cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=train_cfg.save_steps,
        save_total_limit=2,  # the older one survives a kill during the newer one's save
        eval_strategy="steps" if train_cfg.eval_steps and periodic else "no",
        eval_steps=train_cfg.eval_steps or None,
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length" if train_cfg.group_by_length else "random",
        activation_checkpointing=train_cfg.gradient_checkpointing,
        ddp_find_unused_parameters=False,  # LoRA leaves the frozen base weights without gradients
        remove_unused_columns=False,
        report_to=[],
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        use_liger_kernel=bool(train_cfg.get("liger", False)),  # checked: CUDA and liger-kernel (sft_lab.config)
        torch_compile=bool(train_cfg.get("torch_compile", False)),
        disable_tqdm=False,
    )


def train(model, tokenizer, data, train_cfg, lr: float, seed: int, run_dir: Path,
          log_metrics: Callable[[dict, int], None] = lambda m, s: None,
          on_eval: Optional[Callable[[float, int], bool]] = None, probe=None) -> Trained:
    """Train for train_cfg.max_steps, train_cfg.epochs or train_cfg.max_tokens (resuming from the last complete
    checkpoint), or until on_eval says stop. `probe` (sft_lab.trainer.Probe): eval.every's learning curve."""
    import torch

    from sft_lab import cpu
    from sft_lab.cpu.fused import fused_ops
    from sft_lab.cpu.passes import PASS_TOKENS
    from sft_lab.tokens import Collator
    from sft_lab.trainer import Counts, CountingTrainer, TokenBudget, callback, last_complete_checkpoint, quiet_progress

    ckpt_dir = run_dir / "checkpoints"
    param = next(model.parameters())
    micro = micro_batch_size(train_cfg, param.device.type, distributed.world_size())
    budget = TokenBudget.of(train_cfg, data, distributed.world_size())
    args = arguments(train_cfg, lr, seed, ckpt_dir, micro or train_cfg.batch_size, param.dtype, bool(data.heldout),
                     budget.epochs if budget else None)
    counts = Counts()
    flat = args.device.type == "cuda" and bool(train_cfg.get("padding_free", True))  # CPU: the fast path's passes
    trainer = CountingTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=periodic_heldout(data.heldout, train_cfg),
        data_collator=Collator(tokenizer.pad_token_id, flatten=flat), processing_class=tokenizer,
        callbacks=[callback(log_metrics, on_eval, counts, budget, probe)], counts=counts, fast_path=cpu.FastPath(),
        schedule_steps=budget.expected_steps if budget else None,
    )
    fast = cpu.resolve(train_cfg.get("fast_path", "auto"), list(train_cfg.get("fast_path_off") or []),
                       args.device.type, distributed.world_size(), trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled,
                       micro, trainer.accelerator.unwrap_model(model))
    trainer.fast_path = fast  # resolved once the Trainer's accelerator knows whether the model is sharded
    quiet_progress(trainer, budget.expected_steps if budget else None)
    resume = last_complete_checkpoint(ckpt_dir)
    if resume:
        log.info("Resuming from checkpoint %s", resume)
        counts.load(Path(resume))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    counts.started = time.perf_counter()
    with fused_ops(model, enabled=fast.fused) as fused:
        output = trainer.train(resume_from_checkpoint=resume)
    # FSDP / DeepSpeed: every rank joins in gathering the full weights onto rank 0 (a collective)
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    full_weights = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
    counts = counts.merged()  # every rank's batches
    wall = counts.wall_s  # this attempt plus the earlier ones, up to the checkpoint resumed from
    logged = [h for h in trainer.state.log_history if "loss" in h]  # a resumed run keeps the earlier steps' logs
    losses = [h["loss"] for h in logged]
    metrics = {
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "mean_loss": output.training_loss,
        # our own count of non-padding tokens: the Trainer's sums the attention mask, which packing makes 4D (-inf)
        "tokens_seen": int(counts.real_tokens),
        "answer_tokens": int(counts.answer_tokens),  # the tokens the loss saw (what train.max_tokens counts)
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "token_budget": {"max_tokens": budget.max_tokens, "mixture_answer_tokens": budget.per_epoch,
                         "schedule_steps": budget.expected_steps,
                         "data_ran_out": budget.max_tokens > budget.per_epoch} if budget else None,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(counts.real_tokens / wall, 1) if wall > 0 else None,
        "micro_batch_size": micro,
        "padding_free": flat,  # a GPU batch's examples end to end in one row (train.padding_free)
        "pass_tokens": PASS_TOKENS if fast.passes else None,
        "fast_path": fast.record(),  # which CPU optimisations ran, and why the others did not (sft_lab.cpu)
        "padded_tokens": counts.padded_tokens,
        "fused_ops": fused,  # modules that trained as one fused node, by kind (sft_lab.cpu.fused)
        "padding_fraction": round(1 - counts.real_tokens / counts.padded_tokens, 4) if counts.padded_tokens else None,
        "trained_on": counts.sources,
        "resumed_from": resume,
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
        "gradient_checkpointing": bool(getattr(model, "is_activation_checkpointing", False)),  # as the model ran
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in logged],
        # every eval_steps, on eval_examples of the split
        "heldout_curve": [{"step": h["step"], "answer_tokens": counts.at_step.get(h["step"]), "loss": h["eval_loss"]}
                          for h in trainer.state.log_history if "eval_loss" in h],
        "eval_curve": counts.eval_curve or None,  # eval.every: held-out loss and items against answer tokens
    }
    return Trained(metrics, pruned=getattr(trainer.state, "stopped_by_caller", False), full_weights=full_weights)
