"""The Trainer sft-lab trains with: per-source token counts, the CPU fast path's loss, a length-grouped
sampler that resumes exactly, one readable log line a step, the NaN guard and the pruner's stop."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from sft_lab import distributed
from sft_lab.cpu import FastPath
from sft_lab.cpu.loss import answer_loss
from sft_lab.cpu.passes import PASS_TOKENS, loss_in_passes
from sft_lab.files import atomic_write

log = logging.getLogger("sft_lab.train")


class NonFiniteLoss(RuntimeError):
    pass


class Counts:
    """What the trainer actually trained on, per source; saved with each checkpoint."""

    FILE = "sft_lab_counts.json"

    def __init__(self):
        self.sources: dict[str, dict[str, int]] = {}
        self.padded_tokens = 0
        self.at_step: dict[int, int] = {}  # answer tokens trained after each step (all ranks)
        self.eval_curve: list[dict] = []  # eval.every's points: step, answer tokens, held-out loss, items
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

    @property
    def answer_tokens(self) -> int:
        """The tokens the loss saw (train.max_tokens counts these)."""
        return sum(c["label_tokens"] for c in self.sources.values())

    def merged(self) -> "Counts":
        """All ranks' counts added up (a collective under torchrun: every rank calls it)."""
        out = Counts()
        out.earlier_wall_s, out.started, out.at_step = self.earlier_wall_s, self.started, self.at_step
        out.eval_curve = self.eval_curve
        for sources, padded in distributed.gather((self.sources, self.padded_tokens)):
            out.add({"sources": sources, "padded_tokens": padded})
        return out

    def save(self, folder: Path) -> None:
        # Written last and atomically, by rank 0: its presence marks the checkpoint complete.
        total = self.merged()
        if distributed.is_main():
            atomic_write(folder / self.FILE, json.dumps({"sources": total.sources, "padded_tokens": total.padded_tokens,
                                                         "wall_s": total.wall_s, "at_step": total.at_step,
                                                         "eval_curve": total.eval_curve}))

    def load(self, folder: Path) -> None:
        """Rank 0 carries the earlier attempts' totals; the other ranks count only what they train now."""
        path = folder / self.FILE
        if path.is_file() and distributed.is_main():
            saved = json.loads(path.read_text())
            self.sources, self.padded_tokens = saved["sources"], saved["padded_tokens"]
            self.earlier_wall_s = float(saved.get("wall_s", 0.0))
            self.at_step = {int(k): v for k, v in saved.get("at_step", {}).items()}
            self.eval_curve = list(saved.get("eval_curve", []))


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


class CountingTrainer(Trainer):
    """Adds up each trained batch's per-source counts (the collator attaches them); on the CPU fast path the
    loss is taken on label positions only, in passes (sft_lab.cpu)."""

    def __init__(self, *args, fast_path: FastPath, counts: Counts, schedule_steps: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast_path, self.counts, self.schedule_steps = fast_path, counts, schedule_steps

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Under a token budget the schedule runs over the steps the budget is expected to take (not the
        epochs' worth the Trainer is given), and holds its last value should training run past them."""
        if not self.schedule_steps:
            return super().create_scheduler(num_training_steps, optimizer)
        scheduler = super().create_scheduler(self.schedule_steps, optimizer)
        total = self.schedule_steps
        if hasattr(scheduler, "lr_lambdas"):
            scheduler.lr_lambdas = [lambda step, f=f: f(min(step, total)) for f in scheduler.lr_lambdas]
        return scheduler

    def compute_loss(self, model, inputs, *args, **kwargs):
        counts = inputs.pop("counts", None)
        if counts is not None and model.training:
            self.counts.add(counts)
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 4:  # packed rows: the additive mask in the model's dtype
            dtype = next(model.parameters()).dtype
            inputs["attention_mask"] = mask.clamp(min=torch.finfo(dtype).min).to(dtype)
        if not (self.fast_path.label_positions and model.training and "labels" in inputs and not args
                and not kwargs.get("return_outputs")):
            return super().compute_loss(model, inputs, *args, **kwargs)
        return self._label_positions_loss(model, inputs, kwargs.get("num_items_in_batch"))

    def _label_positions_loss(self, model, inputs, num_items_in_batch):
        """The LM head and cross-entropy on the positions that have a label only (the answers): the same loss
        and gradients, less compute. Scaled as Trainer scales a model's own loss (per label token over the
        accumulated batch, across devices)."""
        labels = inputs.pop("labels")
        unwrapped = self.accelerator.unwrap_model(model)
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            loss, tokens = answer_loss(model, unwrapped.get_output_embeddings(), inputs, labels)
            return loss / tokens.clamp(min=1)
        scale = (self.accelerator.num_processes if self.args.average_tokens_across_devices else 1) / num_items_in_batch
        loss, padded = loss_in_passes(model, unwrapped, inputs, labels, scale,
                                      PASS_TOKENS if self.fast_path.passes else None, self.fast_path.unpadded,
                                      self.accelerator.backward)
        self.counts.padded_tokens += padded
        return loss

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler).__name__ == "LengthGroupedSampler":
            return EpochSeededLengthSampler(sampler, self.args.data_seed or self.args.seed)
        return sampler


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
        from transformers.trainer_pt_utils import get_length_grouped_indices

        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))


LOG_KEYS = {"loss": "loss {:.4f}", "grad_norm": "grad_norm {:.3f}", "learning_rate": "lr {:.3g}",
            "eval_loss": "held-out loss {:.4f}", "num_input_tokens_seen": "tokens {:,}", "epoch": "epoch {:.2f}"}


def log_line(logs: dict) -> str:
    """A trainer log as one readable line of numbers (transformers prints them as strings)."""
    return ", ".join(fmt.format(logs[k]) for k, fmt in LOG_KEYS.items() if isinstance(logs.get(k), (int, float)))


def quiet_progress(trainer, expected_steps: Optional[int] = None) -> None:
    """Keep transformers' progress bar, drop its printed dicts of strings: our callback logs numbers. Under a
    token budget the bar counts to the steps the budget is expected to take (the Trainer's own total is the
    epochs' worth it is given)."""

    class Progress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if expected_steps and getattr(self, "training_bar", None) is not None:
                self.training_bar.total = expected_steps
                self.training_bar.refresh()

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(Progress())


@dataclass
class TokenBudget:
    """train.max_tokens: answer tokens to train on. The Trainer gets enough epochs; the callback stops at the
    step that reaches the budget; the schedule runs over the steps that is expected to take."""

    max_tokens: int
    per_epoch: int  # answer tokens in one pass over the mixture
    steps_per_epoch: int

    @property
    def epochs(self) -> int:
        return math.ceil(self.max_tokens / max(self.per_epoch, 1)) + 1  # +1: the budget may end past an epoch's edge

    @property
    def expected_steps(self) -> int:
        return max(1, math.ceil(self.max_tokens * self.steps_per_epoch / max(self.per_epoch, 1)))

    @classmethod
    def of(cls, train_cfg, data, processes: int) -> Optional["TokenBudget"]:
        """train.max_tokens over this mixture (None without it); logs when it takes more than one pass."""
        if not train_cfg.get("max_tokens"):
            return None
        from sft_lab.templates import IGNORE

        per_epoch = sum(sum(label != IGNORE for label in row["labels"]) for row in data.train)
        per_step = train_cfg.batch_size * train_cfg.grad_accum * processes
        budget = cls(int(train_cfg.max_tokens), per_epoch, max(1, -(-len(data.train) // per_step)))
        if budget.max_tokens > per_epoch:
            log.warning("train.max_tokens=%d is more than the mixture's %d answer tokens: the data runs out first, "
                        "and the run takes %.2f epochs", budget.max_tokens, per_epoch, budget.max_tokens / max(per_epoch, 1))
        return budget


@dataclass
class Probe:
    """eval.every / eval.every_tokens: `measure(model)` -> {name: value} (held-out loss and items) every `steps`
    optimizer steps or every `tokens` answer tokens; the training RNG is left as it was."""

    measure: Callable[[object], dict[str, float]]
    steps: int = 0
    tokens: int = 0

    def due(self, step: int, seen: int, last: Optional[dict]) -> bool:
        if self.steps:
            return step % self.steps == 0
        done = (last or {}).get("answer_tokens", 0) // self.tokens
        return seen // self.tokens > done


class kept_rng:
    """Python's, NumPy's and torch's random states, restored on exit: measuring mid-training changes no draw."""

    def __enter__(self):
        import random

        import numpy as np

        self.states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                       torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def __exit__(self, *exc):
        import random

        import numpy as np

        py, npy, cpu, cuda = self.states
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def callback(log_metrics: Callable[[dict, int], None], on_eval: Optional[Callable[[float, int], bool]],
             counts: Counts, budget: Optional[TokenBudget] = None, probe: Optional[Probe] = None):
    class Callback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            counts.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen = counts.merged().answer_tokens if distributed.world_size() > 1 else counts.answer_tokens
            counts.at_step[state.global_step] = seen  # the learning curve's x: answer tokens trained
            if budget is not None and seen >= budget.max_tokens:
                control.should_training_stop = True
            if probe is not None and probe.due(state.global_step, seen, counts.eval_curve[-1] if counts.eval_curve else None):
                self.measure(model, state, control, seen)

        def measure(self, model, state, control, seen: int) -> None:
            with kept_rng():
                values = probe.measure(model)
            model.train()
            counts.eval_curve.append({"step": state.global_step, "answer_tokens": seen, **values})
            log_metrics({f"curve/{k}": v for k, v in values.items()}, state.global_step)
            log.info("step %d (%s answer tokens): %s", state.global_step, f"{seen:,}",
                     ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
            loss = values.get("heldout/loss")
            if loss is not None and on_eval is not None and on_eval(loss, state.global_step):
                control.should_training_stop = True
                state.stopped_by_caller = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
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
