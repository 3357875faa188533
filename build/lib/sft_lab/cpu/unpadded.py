"""Training passes without padding: a pass's rows laid end to end in one row, attending within each row.

Padded to its longest row, a pass runs every pad token through every matrix multiply. On CPU a pass
instead lays its rows' real tokens end to end, with position ids restarting at each row, and
`attention` runs causal SDPA row by row, so no token attends across rows. Same loss and gradients
within float rounding (tests/test_unpadded.py). Rows of unequal length then share a pass at no cost,
so a pass is filled by tokens alone (`sft_lab.cpu.passes.passes_unpadded`).

Used for the model types below with SDPA attention, no sliding window shorter than the longest row and
no gradient checkpointing; otherwise passes are padded as before.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from sft_lab.templates import IGNORE

ATTENTION = "sft_lab_rows"  # the attention implementation's name while a laid-out pass runs
MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}  # causal decoders whose attention goes through AttentionInterface


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, row_bounds=None,
              **kwargs):
    """Causal attention within each row of a laid-out pass: query [1, heads, tokens, dim]; row r spans
    tokens row_bounds[r]:row_bounds[r + 1]. Returns [1, tokens, heads, dim], as transformers' SDPA does."""
    if row_bounds is None or query.shape[0] != 1:
        raise RuntimeError(f"attention {ATTENTION!r} runs only a pass laid out by sft_lab.cpu.unpadded.end_to_end")
    gqa = key.shape[1] != query.shape[1]
    rows = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout,
                                           scale=scaling, is_causal=True, enable_gqa=gqa)
            for a, b in zip(row_bounds[:-1], row_bounds[1:])]
    return torch.cat(rows, dim=2).transpose(1, 2).contiguous(), None


_registered = False


def unsupported(model) -> str | None:
    """Why `model`'s passes cannot be laid end to end, or None: it must be a listed model type with SDPA
    attention and no gradient checkpointing (its recomputation runs in the backward pass, after
    `rows_attention` has restored the model's own attention)."""
    config = model.config
    if config.model_type not in MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {sorted(MODEL_TYPES)}"
    if config._attn_implementation != "sdpa":
        return f"attention {config._attn_implementation!r}: laid-out passes need sdpa"
    if getattr(model, "is_activation_checkpointing", False):
        return "gradient checkpointing recomputes attention after the pass"
    return None


def applies(model, longest: int) -> bool:
    """Whether this pass can be laid end to end: the model allows it and any sliding window is at least as
    long as the longest row."""
    window = getattr(model.config, "sliding_window", None)
    return unsupported(model) is None and (window is None or window >= longest)


def end_to_end(inputs: dict, labels: torch.Tensor, rows: list[int], lengths: list[int]) -> tuple[dict, torch.Tensor]:
    """The given rows of a right-padded batch as one row of their real tokens: (model inputs, labels).
    A row's first token gets no label: in the batch it was never a target either."""
    ids, row_labels, positions, bounds = [], [], [], [0]
    for r in rows:
        n = lengths[r]
        ids.append(inputs["input_ids"][r, :n])
        row_labels.append(labels[r, :n].clone())
        row_labels[-1][0] = IGNORE
        positions.append(torch.arange(n, device=labels.device))
        bounds.append(bounds[-1] + n)
    part = {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat(positions)[None], "row_bounds": bounds}
    return part, torch.cat(row_labels)[None]


@contextlib.contextmanager
def rows_attention(model):
    """`attention` as the model's attention implementation for the forward passes in the block. The config
    field is set directly: transformers' set_attn_implementation re-checks the model class (reading its
    source) on every call, once per pass here."""
    global _registered
    if not _registered:  # registered on first use, not at import
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION, attention)
        _registered = True
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before
