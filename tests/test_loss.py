"""The answer-token loss: the model's own loss over the same labels, and autograd's gradients."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("weight_grad", [False, True])  # LoRA (frozen head) and full fine-tuning (trained head)
def test_chunked_head_and_cross_entropy_give_autograds_loss_and_gradients(weight_grad):
    from sft_lab.cpu.loss import CHUNK, _LinearCrossEntropy

    torch.manual_seed(0)
    n = CHUNK * 2 + 7  # a last chunk that is not full
    hidden = torch.randn(n, 32, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(500, 32, dtype=torch.float64, requires_grad=weight_grad)
    target = torch.randint(0, 500, (n,))
    want = torch.nn.functional.cross_entropy(hidden @ weight.T, target, reduction="sum")
    want_grads = torch.autograd.grad(want * 0.3, [hidden] + ([weight] if weight_grad else []))
    got = _LinearCrossEntropy.apply(hidden, weight, target)
    got_grads = torch.autograd.grad(got * 0.3, [hidden] + ([weight] if weight_grad else []))
    assert torch.allclose(got, want, rtol=1e-10)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-10)


def test_answer_loss_is_the_models_own_loss_on_the_same_labels():
    from transformers import LlamaConfig, LlamaForCausalLM

    from sft_lab.cpu.loss import answer_loss
    from sft_lab.templates import IGNORE

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    ids = torch.randint(0, 300, (3, 20))
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0  # padding
    labels = ids.clone()
    labels[:, :8] = IGNORE  # the prompt
    labels[mask == 0] = IGNORE
    inputs = {"input_ids": ids, "attention_mask": mask}
    want = model(**inputs, labels=labels).loss
    total, count = answer_loss(model, model.get_output_embeddings(), inputs, labels)
    assert int(count) == int((labels[:, 1:] != IGNORE).sum())
    assert torch.allclose(total / count, want, rtol=1e-5)
    (total / count).backward()
    got_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    want.backward()
    assert torch.allclose(got_grad, model.model.layers[0].mlp.up_proj.weight.grad, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        assert torch.allclose(answer_loss(model, model.get_output_embeddings(), inputs, labels)[0], total, rtol=1e-5)
