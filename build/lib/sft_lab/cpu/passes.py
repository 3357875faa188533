"""A batch as passes of about PASS_TOKENS tokens whose gradients add up: which rows go together, and the
loss of a batch run that way (one pass's activations alive at a time)."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch

from sft_lab.cpu import unpadded
from sft_lab.cpu.loss import answer_loss

# A pass's live activations grow with its tokens (about 1 MB a token for SmolLM2 with LoRA on every
# projection), and each pass also reads every weight twice, which costs SmolLM2 on 2 cores about as much as
# 32 tokens' compute (PASS_OVERHEAD). Measured for SmolLM2-135M on 2 cores (benchmarks/speed/train_throughput.py,
# fused ops, 2 threads): a 2 x 256 pass trained 285 tokens/s, 2 x 128 280, 1 x 100 222. Laid end to end
# (`unpadded`), a pass counts real tokens only.
PASS_TOKENS = 512
PASS_OVERHEAD = 32


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


def right_padded(mask: torch.Tensor) -> bool:
    """Whether every row of a 2D attention mask is ones then zeros."""
    lengths = mask.sum(1, keepdim=True)
    return bool((mask.bool() == (torch.arange(mask.shape[1], device=mask.device) < lengths)).all())


def rows_of(inputs: dict, labels: torch.Tensor, rows: list[int], width: int):
    """The given rows of a batch, cut to `width` tokens: (model inputs, labels)."""
    index = torch.tensor(rows, device=labels.device)
    part = {k: v[index, :width] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in inputs.items()}
    return part, labels[index, :width]


def loss_in_passes(model, unwrapped, inputs: dict, labels: torch.Tensor, scale: float, pass_tokens: Optional[int],
                   lay_out: bool, backward: Callable[[torch.Tensor], None]) -> tuple[torch.Tensor, int]:
    """The batch's answer loss (scaled) run as passes of about `pass_tokens` tokens: every pass but the last
    takes its backward here; the last one's loss plus the others' (detached) is returned, with the padded
    tokens added or saved relative to the batch as given. `lay_out`: lay a pass's rows end to end where the
    model allows (`unpadded.applies`); otherwise each pass is cut to its own longest row (`passes`)."""
    head = unwrapped.get_output_embeddings()
    mask = inputs.get("attention_mask")
    splittable = pass_tokens and mask is not None and mask.dim() == 2
    lengths = mask.sum(1).tolist() if splittable else []
    padded = 0
    if splittable and lay_out and unpadded.applies(unwrapped, max(lengths)) and right_padded(mask):
        runs = passes_unpadded(lengths, pass_tokens)
        padded = sum(lengths) - mask.numel()
        layout = lambda rows: unpadded.end_to_end(inputs, labels, rows, lengths)  # noqa: E731
        attention = lambda: unpadded.rows_attention(unwrapped)  # noqa: E731
    else:
        runs = passes(lengths, pass_tokens) if splittable else []
        if len(runs) < 2:
            runs = [None]  # the batch as it is, in one pass
        else:  # padding as computed: each pass to its own longest row (right padding)
            widths = [max(lengths[r] for r in rows) for rows in runs]
            padded = sum(w * len(rows) for w, rows in zip(widths, runs)) - mask.numel()
        layout = lambda rows: rows_of(inputs, labels, rows, max(lengths[r] for r in rows))  # noqa: E731
        attention = contextlib.nullcontext
    done = 0.0
    for i, rows in enumerate(runs):
        part, part_labels = (inputs, labels) if rows is None else layout(rows)
        with attention():
            loss = answer_loss(model, head, part, part_labels)[0] * scale
        if i == len(runs) - 1:
            return loss + done, padded  # the caller takes this one's backward; the sum is what it logs
        backward(loss)
        done = done + loss.detach()
    raise AssertionError("unreachable")
