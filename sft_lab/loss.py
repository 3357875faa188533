"""Cross-entropy on the answer tokens only: the LM head runs at positions whose next token has a label.

Prompt and padding positions carry no label, so their logits (a full-vocabulary row each) are never
built. Training on CPU and the held-out loss use it; the sum and count are those of the model's own
loss over the same labels.
"""

from __future__ import annotations

import torch

from sft_lab.templates import IGNORE


def answer_loss(model, head, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of label tokens) for one batch; `head` is the model's output embedding."""
    hidden = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = head(hidden[:, :-1][keep].to(head.weight.dtype)).float()
    return torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum"), keep.sum()
