"""Cross-entropy on the answer tokens only: the LM head runs at positions whose next token has a label.

Prompt and padding positions carry no label, so their logits (a full-vocabulary row each) are never
built. The answer positions' logits are built a chunk at a time, and their gradient is taken while
the chunk is there, so the [answer tokens, vocabulary] matrix never exists whole: at SmolLM2's 49,152
words that was the largest tensor of a training step. Training on CPU and the held-out loss use it; the
sum and count are those of the model's own loss over the same labels.
"""

from __future__ import annotations

import torch

from sft_lab.templates import IGNORE

CHUNK = 128  # positions per chunk: 128 x 49,152 fp32 logits are 25 MB


def answer_loss(model, head, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of label tokens) for one batch; `head` is the model's output embedding."""
    no_position = torch.zeros(0, dtype=torch.long, device=labels.device)  # the model's own head runs on no position
    hidden = model(**inputs, output_hidden_states=True, logits_to_keep=no_position, use_cache=False).hidden_states[-1]
    target = labels[:, 1:]
    keep = target != IGNORE
    kept = hidden[:, :-1][keep].to(head.weight.dtype)
    if type(head) is not torch.nn.Linear or head.bias is not None:  # an adapted or biased head: as the model runs it
        return torch.nn.functional.cross_entropy(head(kept).float(), target[keep], reduction="sum"), keep.sum()
    if torch.is_grad_enabled() and (kept.requires_grad or head.weight.requires_grad):
        return _LinearCrossEntropy.apply(kept, head.weight, target[keep]), keep.sum()
    return _chunked(kept, head.weight, target[keep], grads=False)[0], keep.sum()


def _chunked(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, grads: bool, weight_grad: bool = False):
    """Summed cross-entropy of (hidden @ weight.T) against target, chunk by chunk; with grads, also
    d loss / d hidden and (weight_grad) d loss / d weight."""
    acc = torch.promote_types(weight.dtype, torch.float32)  # bf16 logits are summed in fp32
    total = torch.zeros((), dtype=acc, device=hidden.device)
    d_hidden = torch.empty_like(hidden) if grads else None
    d_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if weight_grad else None
    for start in range(0, hidden.shape[0], CHUNK):
        h, t = hidden[start:start + CHUNK], target[start:start + CHUNK]
        logits = (h @ weight.T).to(acc)
        picked = logits.gather(1, t[:, None]).squeeze(1)
        top = logits.amax(dim=-1, keepdim=True)
        exp = logits.sub_(top).exp_()  # in place of the logits: no second [chunk, vocabulary] tensor
        sums = exp.sum(dim=-1, keepdim=True)
        total += (sums.log() + top - picked[:, None]).sum()  # log-sum-exp minus the target's logit
        if grads:
            probs = exp.div_(sums)  # softmax
            probs[torch.arange(len(t), device=t.device), t] -= 1
            d_hidden[start:start + CHUNK] = (probs.to(weight.dtype) @ weight)
            if weight_grad:
                d_weight.addmm_(probs.T, h.to(acc))
    return total, d_hidden, d_weight


class _LinearCrossEntropy(torch.autograd.Function):
    """The LM head and summed cross-entropy in one: the gradients are taken in the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, target):
        loss, d_hidden, d_weight = _chunked(hidden, weight, target, grads=True, weight_grad=weight.requires_grad)
        ctx.save_for_backward(d_hidden, d_weight if d_weight is not None else torch.empty(0))
        ctx.weight_grad, ctx.weight_dtype = d_weight is not None, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad):
        d_hidden, d_weight = ctx.saved_tensors
        return d_hidden * grad.to(d_hidden.dtype), (d_weight * grad).to(ctx.weight_dtype) if ctx.weight_grad else None, None
