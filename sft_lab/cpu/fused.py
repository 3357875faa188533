"""Fused training ops for CPU: a LoRA projection, an RMSNorm and a SwiGLU product each as one autograd node.

peft's LoRA projection is five ops and as many autograd nodes (base matmul, A, B, scale, add); here it is
one node whose forward adds the B product into the base output in place and whose backward takes the
input gradient of base and adapter in one accumulation. RMSNorm's seven ops become one node; the SwiGLU
product saves its two inputs, not also the SiLU output (recomputed in the backward pass), so each layer
keeps one [tokens, intermediate] tensor fewer. Same function and gradients within float rounding
(tests/test_fused.py checks them in float64 and on a whole model); 1.17x a SmolLM2 forward and backward
on 2 cores (benchmarks/speed/fused_ops.py).

`fused_ops(model)` swaps the forwards of the modules it can fuse for the duration of a `with` block and
restores them after. A module it cannot fuse exactly (LoRA dropout, DoRA, several adapters, a trained
norm weight, another activation, a non-fp32 input) keeps its own forward. train.fast_path_off=[fused] turns it off.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}  # weight * x / rms(x)
SILU = {"SiLU", "SiLUActivation"}  # torch's and transformers' own
SWIGLU_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}  # down(act(gate(x)) * up(x))


class LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T with frozen W and b. The rank-wide products are taken as [r, tokens]
    (A x^T, B^T g^T): MKL ran them 2.5x faster than as [tokens, r] on 2 cores."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale):
        rows = x.reshape(-1, x.shape[-1])
        y = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
        down = torch.mm(lora_a, rows.t())  # [r, tokens]
        y.addmm_(down.t(), lora_b.t(), alpha=scale)
        ctx.save_for_backward(rows, down, weight, lora_a, lora_b)
        ctx.scale, ctx.in_shape = scale, x.shape
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        rows, down, weight, lora_a, lora_b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        g_down = torch.mm(lora_b.t(), g.t()).mul_(ctx.scale)  # [r, tokens]
        g_x = g_a = g_b = None
        if ctx.needs_input_grad[0]:
            g_x = torch.mm(g, weight).addmm_(g_down.t(), lora_a).view(ctx.in_shape)
        if ctx.needs_input_grad[3]:
            g_a = torch.mm(g_down, rows)
        if ctx.needs_input_grad[4]:
            g_b = torch.mm(down, g).t().mul_(ctx.scale)
        return g_x, None, None, g_a, g_b, None


class RMSNorm(torch.autograd.Function):
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension, with a frozen weight."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, rstd, weight)
        return torch.mul(x, rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        g = grad * weight
        normed = x * rstd
        return g.sub_(normed.mul_((g * normed).mean(-1, keepdim=True))).mul_(rstd), None, None


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up, saving gate and up only."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad * up, gate), F.silu(gate).mul_(grad)


def _lora_forward(module):
    """The fused forward of a peft lora.Linear with one plain adapter, or None where it cannot be exact."""
    from peft.tuners.lora.layer import Linear

    if type(module) is not Linear or type(module.base_layer) is not torch.nn.Linear or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    if (name not in module.lora_A or name in module.lora_variant or module.lora_B[name].bias is not None
            or type(module.lora_dropout[name]) is not torch.nn.Identity):
        return None
    base, plain = module.base_layer, type(module).forward.__get__(module)

    def forward(x, *args, **kwargs):
        lora_a, lora_b = module.lora_A[name].weight, module.lora_B[name].weight  # as they are now (a resume may load new ones)
        if (args or kwargs or module.merged or module.disable_adapters or x.dtype != torch.float32
                or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad)
                or lora_a.dtype != torch.float32):
            return plain(x, *args, **kwargs)
        return LoraLinear.apply(x, base.weight, base.bias, lora_a, lora_b, module.scaling[name])

    return forward


def _norm_forward(module):
    if type(module).__name__ not in RMS_NORMS or not hasattr(module, "variance_epsilon"):
        return None
    plain = type(module).forward.__get__(module)

    def forward(x):
        if module.weight.requires_grad or x.dtype != torch.float32 or module.weight.dtype != torch.float32:
            return plain(x)
        return RMSNorm.apply(x, module.weight, module.variance_epsilon)

    return forward


def _mlp_forward(module):
    if type(module).__name__ not in SWIGLU_MLPS or type(getattr(module, "act_fn", None)).__name__ not in SILU:
        return None

    def forward(x):
        return module.down_proj(SwiGLU.apply(module.gate_proj(x), module.up_proj(x)))

    return forward


@contextlib.contextmanager
def fused_ops(model, enabled: bool = True):
    """Within the block the model trains with fused ops where they apply (when enabled); yields their counts
    by kind."""
    counts = {"lora": 0, "rms_norm": 0, "swiglu": 0}
    swapped = []
    if enabled:
        for module in model.modules():
            for kind, make in (("lora", _lora_forward), ("rms_norm", _norm_forward), ("swiglu", _mlp_forward)):
                forward = make(module)
                if forward is not None and "forward" not in vars(module):
                    module.forward = forward
                    swapped.append(module)
                    counts[kind] += 1
    try:
        yield counts
    finally:
        for module in swapped:
            del module.forward
