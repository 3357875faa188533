"""The fused training ops (sft_lab.cpu.fused) compute what peft's and transformers' own modules compute."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_lora_model
from sft_lab.cpu.fused import LoraLinear, RMSNorm, SwiGLU, fused_ops


def test_each_fused_op_has_autograds_gradients_in_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    a, bb = (torch.randn(3, 6, dtype=torch.float64, requires_grad=True),
             torch.randn(4, 3, dtype=torch.float64, requires_grad=True))
    for bias in (None, b):
        assert torch.autograd.gradcheck(lambda x, a, bb: LoraLinear.apply(x, w, bias, a, bb, 0.5), (x, a, bb))
        want = torch.nn.functional.linear(x, w, bias) + 0.5 * (x @ a.T) @ bb.T
        assert torch.allclose(LoraLinear.apply(x, w, bias, a, bb, 0.5), want)
    norm_w = torch.randn(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: RMSNorm.apply(x, norm_w, 1e-5), (x,))
    assert torch.allclose(RMSNorm.apply(x, norm_w, 1e-5), norm_w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    up = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU.apply, (x, up))
    assert torch.allclose(SwiGLU.apply(x, up), torch.nn.functional.silu(x) * up)


def loss_and_grads(model, ids, labels):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_fused_model_trains_with_the_same_loss_and_lora_gradients():
    model = tiny_lora_model()
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (3, 24))
    labels = ids.clone()
    labels[:, :10] = -100
    want_loss, want = loss_and_grads(model, ids, labels)
    with fused_ops(model) as counts:
        got_loss, got = loss_and_grads(model, ids, labels)
        layers = model.config.num_hidden_layers
        assert counts == {"lora": 7 * layers, "rms_norm": 2 * layers + 1, "swiglu": layers}
    assert got.keys() == want.keys() and len(want) == 2 * 7 * layers  # every A and B
    assert got_loss == pytest.approx(want_loss, abs=1e-6)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-7), name
    assert not any("forward" in vars(m) for m in model.modules())  # restored after the block
    assert loss_and_grads(model, ids, labels)[0] == want_loss


def test_modules_that_cannot_be_fused_exactly_keep_their_own_forward():
    model = tiny_lora_model("lora.dropout=0.1")  # dropout masks: peft's own path
    with fused_ops(model) as counts:
        assert counts["lora"] == 0 and counts["rms_norm"] > 0
    with fused_ops(tiny_lora_model(), enabled=False) as counts:
        assert counts == {"lora": 0, "rms_norm": 0, "swiglu": 0}
