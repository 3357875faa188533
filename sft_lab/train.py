"""transformers Trainer on the tokenised data -> adapter (or full model) + train metrics.

Checkpoints go to <run>/checkpoints every train.save_steps; a re-launched run resumes from the
last complete one. `on_eval` lets a caller (the sweep's pruner) see each held-out loss and stop the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from sft_lab import distributed
from sft_lab.files import atomic_write

log = logging.getLogger(__name__)


@dataclass
class Trained:
    metrics: dict[str, Any]
    pruned: bool = False  # on_eval asked to stop (a pruned sweep trial)
    full_weights: Optional[dict] = None  # sharded (FSDP, ZeRO): the gathered weights (rank 0), as the model cannot save


# Loss on label positions only, on CPU (see CountingTrainer). On a GPU the model's own loss is faster
# (an H100 trained 2.1x more tokens/s with it at 135M parameters; benchmarks/gpu_throughput.py).
# SFT_LAB_FULL_LOGITS=1 restores transformers' own full-logits loss everywhere, for
# benchmarks/label_positions.py and for debugging.
LABEL_POSITIONS_ONLY = os.environ.get("SFT_LAB_FULL_LOGITS", "") not in ("1", "true")


class NonFiniteLoss(RuntimeError):
    pass


class Counts:
    """What the trainer actually trained on, per source; saved with each checkpoint."""

    FILE = "sft_lab_counts.json"

    def __init__(self):
        self.sources: dict[str, dict[str, int]] = {}
        self.padded_tokens = 0
        self.earlier_wall_s = 0.0  # training time of earlier attempts, up to the checkpoint resumed from
        self.started = time.perf_counter()

    @property
    def wall_s(self) -> float:
        return self.earlier_wall_s + time.perf_counter() - self.started

    def add(self, counts: dict) -> None:
        for source, c in counts["sources"].items():
            acc = self.sources.setdefault(source, {"examples": 0, "tokens": 0, "label_tokens": 0})
            for k, v in c.items():
                acc[k] += v
        self.padded_tokens += counts["padded_tokens"]

    @property
    def real_tokens(self) -> int:
        return sum(c["tokens"] for c in self.sources.values())

    def merged(self) -> "Counts":
        """All ranks' counts added up (a collective under torchrun: every rank calls it)."""
        out = Counts()
        out.earlier_wall_s, out.started = self.earlier_wall_s, self.started
        for sources, padded in distributed.gather((self.sources, self.padded_tokens)):
            out.add({"sources": sources, "padded_tokens": padded})
        return out

    def save(self, folder: Path) -> None:
        # Written last and atomically, by rank 0: its presence marks the checkpoint complete.
        total = self.merged()
        if distributed.is_main():
            atomic_write(folder / self.FILE, json.dumps({"sources": total.sources, "padded_tokens": total.padded_tokens,
                                                         "wall_s": total.wall_s}))

    def load(self, folder: Path) -> None:
        """Rank 0 carries the earlier attempts' totals; the other ranks count only what they train now."""
        path = folder / self.FILE
        if path.is_file() and distributed.is_main():
            saved = json.loads(path.read_text())
            self.sources, self.padded_tokens = saved["sources"], saved["padded_tokens"]
            self.earlier_wall_s = float(saved.get("wall_s", 0.0))


def last_complete_checkpoint(ckpt_dir: Path) -> Optional[str]:
    """The newest checkpoint whose save finished; ones cut off by a kill are removed."""
    if not ckpt_dir.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, path in reversed(steps):
        if (path / Counts.FILE).is_file():
            return str(path)
        if distributed.is_main():
            log.warning("Removing checkpoint %s: its save was cut off", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def periodic_heldout(heldout: list, train_cfg) -> Optional[list]:
    """The held-out examples for the every-eval_steps loss: all, or eval_examples spread over the split."""
    n = train_cfg.get("eval_examples", 0)
    if not heldout:
        return None
    if 0 < n < len(heldout):
        return [heldout[i * len(heldout) // n] for i in range(n)]
    return heldout


def _trainer_class():
    import torch
    from transformers import Trainer

    from sft_lab import unpadded
    from sft_lab.loss import answer_loss

    class CountingTrainer(Trainer):
        """Adds up each trained batch's per-source counts (the collator attaches them)."""

        counts: Counts
        pass_tokens: Optional[int] = None  # see _label_positions_loss

        def compute_loss(self, model, inputs, *args, **kwargs):
            counts = inputs.pop("counts", None)
            if counts is not None and model.training:
                self.counts.add(counts)
            mask = inputs.get("attention_mask")
            if mask is not None and mask.dim() == 4:  # packed rows: the additive mask in the model's dtype
                dtype = next(model.parameters()).dtype
                inputs["attention_mask"] = mask.clamp(min=torch.finfo(dtype).min).to(dtype)
            if not self._label_positions_apply(model, inputs, args, kwargs):
                return super().compute_loss(model, inputs, *args, **kwargs)
            return self._label_positions_loss(model, inputs, kwargs.get("num_items_in_batch"))

        def _label_positions_apply(self, model, inputs, args, kwargs) -> bool:
            """Training on CPU, unsharded. On a GPU the model's own loss is faster (LABEL_POSITIONS_ONLY);
            sharded (FSDP, ZeRO), the LM head may run only inside the model's own forward."""
            return (LABEL_POSITIONS_ONLY and model.training and "labels" in inputs and not args
                    and not kwargs.get("return_outputs") and self.args.device.type == "cpu"
                    and not (self.is_fsdp_enabled or self.is_deepspeed_enabled))

        def _label_positions_loss(self, model, inputs, num_items_in_batch):
            """The LM head and cross-entropy on the positions that have a label only (the answers), not on
            the prompt and padding: the same loss and gradients, less compute. Scaled as Trainer scales
            a model's own loss (per label token over the accumulated batch, across devices).

            With `pass_tokens` the batch runs as passes of about that many tokens; all but the last take
            their backward here, so one pass's activations are alive at a time. The gradients add up to
            the whole batch's. Where the model allows (`unpadded.applies`), a pass's rows are laid end to
            end without padding (`passes_unpadded`); otherwise each pass is cut to its own longest row
            (`passes`)."""
            labels = inputs.pop("labels")
            unwrapped = self.accelerator.unwrap_model(model)
            head = unwrapped.get_output_embeddings()
            if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
                loss, tokens = answer_loss(model, head, inputs, labels)
                return loss / tokens.clamp(min=1)
            scale = (self.accelerator.num_processes if self.args.average_tokens_across_devices else 1) / num_items_in_batch
            mask = inputs.get("attention_mask")
            splittable = self.pass_tokens and mask is not None and mask.dim() == 2 and self.accelerator.num_processes == 1
            lengths = mask.sum(1).tolist() if splittable else []
            if splittable and unpadded.applies(unwrapped, max(lengths)) and _right_padded(mask):
                runs = passes_unpadded(lengths, self.pass_tokens)
                self.counts.padded_tokens += sum(lengths) - mask.numel()
                layout = lambda rows: unpadded.end_to_end(inputs, labels, rows, lengths)
                attention = lambda: unpadded.rows_attention(unwrapped)
            else:
                runs = passes(lengths, self.pass_tokens) if splittable else []
                if len(runs) < 2:
                    runs = [None]  # the batch as it is, in one pass
                else:  # padding as computed: each pass to its own longest row (right padding)
                    widths = [max(lengths[r] for r in rows) for rows in runs]
                    self.counts.padded_tokens += sum(w * len(rows) for w, rows in zip(widths, runs)) - mask.numel()
                layout = lambda rows: _rows(inputs, labels, rows, max(lengths[r] for r in rows))
                attention = contextlib.nullcontext
            done = 0.0
            for i, rows in enumerate(runs):
                part, part_labels = (inputs, labels) if rows is None else layout(rows)
                with attention():
                    loss = answer_loss(model, head, part, part_labels)[0] * scale
                if i == len(runs) - 1:
                    return loss + done  # Trainer takes this one's backward; the sum is what it logs
                self.accelerator.backward(loss)
                done = done + loss.detach()

        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if type(sampler).__name__ == "LengthGroupedSampler":
                return EpochSeededLengthSampler(sampler, self.args.data_seed or self.args.seed)
            return sampler

    return CountingTrainer


def _right_padded(mask) -> bool:
    """Whether every row of a 2D attention mask is ones then zeros."""
    import torch

    lengths = mask.sum(1, keepdim=True)
    return bool((mask.bool() == (torch.arange(mask.shape[1], device=mask.device) < lengths)).all())


def _rows(inputs: dict, labels, rows: list[int], width: int):
    """The given rows of a batch, cut to `width` tokens: (model inputs, labels)."""
    import torch

    index = torch.tensor(rows, device=labels.device)
    part = {k: v[index, :width] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in inputs.items()}
    return part, labels[index, :width]


class EpochSeededLengthSampler:
    """Length-grouped batches whose order depends only on (seed, epoch).

    transformers' LengthGroupedSampler draws from the global RNG, whose state a resumed run restores
    at the checkpoint, not at the epoch's start: resuming in a later epoch then sees other batches.
    """

    def __init__(self, inner, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = inner.lengths, inner.batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))


LOG_KEYS = {"loss": "loss {:.4f}", "grad_norm": "grad_norm {:.3f}", "learning_rate": "lr {:.3g}",
            "eval_loss": "held-out loss {:.4f}", "num_input_tokens_seen": "tokens {:,}", "epoch": "epoch {:.2f}"}


def log_line(logs: dict) -> str:
    """A trainer log as one readable line of numbers (transformers prints them as strings)."""
    return ", ".join(fmt.format(logs[k]) for k, fmt in LOG_KEYS.items() if isinstance(logs.get(k), (int, float)))


def _quiet_progress(trainer) -> None:
    """Keep transformers' progress bar, drop its printed dicts of strings: our callback logs numbers."""
    from transformers.trainer_callback import ProgressCallback

    class Progress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(Progress())


def _callback(log_metrics: Callable[[dict, int], None], on_eval: Optional[Callable[[float, int], bool]], history: list,
              counts: Counts):
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            counts.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            history.append({"step": state.global_step, **logs})
            if "loss" in logs and not math.isfinite(logs["loss"]):
                raise NonFiniteLoss(f"training loss is {logs['loss']} at step {state.global_step}")
            log_metrics({f"train/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}, state.global_step)
            if distributed.is_main() and ("loss" in logs or "eval_loss" in logs):
                log.info("step %d/%d: %s", state.global_step, state.max_steps, log_line(logs))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if getattr(self, "last_step", None) == state.global_step:  # the final evaluate repeats the last one
                return
            self.last_step = state.global_step
            if loss is not None and on_eval is not None and on_eval(loss, state.global_step):
                control.should_training_stop = True
                state.stopped_by_caller = True

    return Callback()


def train(model, tokenizer, data, train_cfg, lr: float, seed: int, run_dir: Path,
          log_metrics: Callable[[dict, int], None] = lambda m, s: None,
          on_eval: Optional[Callable[[float, int], bool]] = None) -> Trained:
    """Train for train_cfg.max_steps or train_cfg.epochs (resuming from the last complete checkpoint), or until on_eval says stop."""
    import torch
    from transformers import TrainingArguments

    from sft_lab.fused import fused_ops
    from sft_lab.tokens import Collator

    ckpt_dir = run_dir / "checkpoints"
    dtype = next(model.parameters()).dtype
    micro = micro_batch_size(train_cfg, next(model.parameters()).device.type, distributed.world_size())
    rows = micro or train_cfg.batch_size  # None: the whole batch, in passes cut by tokens
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        max_steps=train_cfg.max_steps or -1,  # -1: train.epochs decides
        num_train_epochs=train_cfg.epochs or 1,
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
        eval_strategy="steps" if train_cfg.eval_steps and data.heldout else "no",
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
        disable_tqdm=False,
    )
    history: list[dict] = []
    counts = Counts()
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=data.train, eval_dataset=periodic_heldout(data.heldout, train_cfg),
        data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=[_callback(log_metrics, on_eval, history, counts)],
    )
    trainer.counts = counts
    trainer.pass_tokens = None if micro else PASS_TOKENS
    _quiet_progress(trainer)
    resume = last_complete_checkpoint(ckpt_dir)
    if resume:
        log.info("Resuming from checkpoint %s", resume)
        counts.load(Path(resume))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    counts.started = time.perf_counter()
    fuse = args.device.type == "cpu" and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)
    with fused_ops(model, enabled=fuse) as fused:
        output = trainer.train(resume_from_checkpoint=resume)
    # FSDP / DeepSpeed: every rank joins in gathering the full weights onto rank 0 (a collective)
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    full_weights = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
    counts = counts.merged()  # every rank's batches
    wall = counts.wall_s  # this attempt plus the earlier ones, up to the checkpoint resumed from
    stopped = getattr(trainer.state, "stopped_by_caller", False)

    periodic = [{"step": h["step"], "loss": h["eval_loss"]} for h in trainer.state.log_history if "eval_loss" in h]
    logged = [h for h in trainer.state.log_history if "loss" in h]  # a resumed run keeps the earlier steps' logs
    losses = [h["loss"] for h in logged]
    # our own count of non-padding tokens: the Trainer's sums the attention mask, which packing makes 4D (-inf)
    tokens_seen = int(counts.real_tokens)
    metrics = {
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "mean_loss": output.training_loss,
        "tokens_seen": tokens_seen,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(counts.real_tokens / wall, 1) if wall > 0 else None,
        "micro_batch_size": micro,
        "pass_tokens": None if micro else PASS_TOKENS,
        "padded_tokens": counts.padded_tokens,
        "fused_ops": fused,  # modules that trained as one fused node, by kind (sft_lab.fused)
        "padding_fraction": round(1 - counts.real_tokens / counts.padded_tokens, 4) if counts.padded_tokens else None,
        "trained_on": counts.sources,
        "resumed_from": resume,
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
        "gradient_checkpointing": bool(getattr(model, "is_activation_checkpointing", False)),  # as the model ran
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in logged],
        "heldout_curve": periodic,  # every eval_steps, on eval_examples of the split
    }
    return Trained(metrics, pruned=stopped, full_weights=full_weights)


# Tokens per forward pass on CPU when train.micro_batch_size is null: a pass's live activations grow with its
# tokens (about 1 MB a token for SmolLM2 with LoRA on every projection), and each pass also reads every weight
# twice, which costs SmolLM2 on 2 cores about as much as 32 tokens' compute (PASS_OVERHEAD). A 2 x 256 pass
# trained 285 tokens/s, 2 x 128 280, 1 x 100 222 (fused ops, 2 threads). Laid end to end (sft_lab.unpadded),
# a pass counts real tokens only.
PASS_TOKENS = 512
PASS_OVERHEAD = 32


def micro_batch_size(train_cfg, device_type: str, processes: int = 1) -> Optional[int]:
    """Rows per forward pass: train.micro_batch_size; if null, None on CPU in one process (the batch runs
    in passes of about PASS_TOKENS tokens, see `passes_unpadded` and `passes`), 2 on CPU across processes (an even batch),
    or the whole batch on a GPU."""
    if train_cfg.get("micro_batch_size"):
        return int(train_cfg.micro_batch_size)
    if device_type == "cpu" and processes == 1:
        return None
    return 2 if device_type == "cpu" and train_cfg.batch_size % 2 == 0 else train_cfg.batch_size


def passes(lengths: list[int], budget: int) -> list[list[int]]:
    """The batch's rows (indices) per forward pass: rows of similar length together, each pass within
    `budget` tokens (rows x its longest row; a longer row runs alone), and as few padded tokens and
    passes as that allows (each pass also costs about PASS_OVERHEAD tokens of compute)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    cost, cut = [0] + [math.inf] * len(order), [0] * (len(order) + 1)  # the cheapest split of the first j rows
    for j in range(1, len(order) + 1):
        for i in range(j - 1, -1, -1):  # rows i..j-1 in one pass; the longest is order[i]
            tokens = (j - i) * lengths[order[i]]
            if j - i > 1 and tokens > budget:
                break
            if cost[i] + PASS_OVERHEAD + tokens < cost[j]:
                cost[j], cut[j] = cost[i] + PASS_OVERHEAD + tokens, i
    out, j = [], len(order)
    while j:
        out.insert(0, order[cut[j]:j])
        j = cut[j]
    return out


def passes_unpadded(lengths: list[int], budget: int) -> list[list[int]]:
    """The batch's rows (indices) per pass when a pass's rows are laid end to end: each pass within `budget`
    real tokens (a longer row runs alone), as few passes as first-fit by decreasing length finds."""
    out: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((p for p, free in enumerate(room) if lengths[i] <= free), None)
        if fit is None:
            out.append([i])
            room.append(budget - lengths[i])
        else:
            out[fit].append(i)
            room[fit] -= lengths[i]
    return out


TRAINED = "train_result.json"


def save_trained(model, tokenizer, run_dir: Path, metrics: dict, full_weights: Optional[dict] = None) -> Path:
    """Save the adapter (or the full model for r=0), then the train metrics last, atomically: their
    presence marks the weights complete. Checkpoints stay until the record says finished.
    `full_weights`: the gathered state dict of a sharded (FSDP, ZeRO) model."""
    out = run_dir / ("adapter" if hasattr(model, "peft_config") else "model")
    model.save_pretrained(out, **({"state_dict": full_weights} if full_weights is not None else {}))
    tokenizer.save_pretrained(out)
    atomic_write(out / TRAINED, json.dumps(metrics, default=float))
    return out


def trained_result(run_dir: Path) -> Optional[dict]:
    """The train metrics of an earlier attempt whose weights were saved completely, else None."""
    for name in ("adapter", "model"):
        path = run_dir / name / TRAINED
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None


def load_trained(model, run_dir: Path):
    """The base model with the saved adapter (or the saved full model): (model, folder)."""
    if (run_dir / "adapter" / TRAINED).is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, run_dir / "adapter"), run_dir / "adapter"
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=next(model.parameters()).dtype)
    return full.to(next(model.parameters()).device), run_dir / "model"
