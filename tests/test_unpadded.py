"""Passes without padding (sft_lab.cpu.unpadded): rows laid end to end train as the padded batch does."""

from __future__ import annotations

import pytest
import torch

from sft_lab.cpu import unpadded
from conftest import tiny_lora_model
from sft_lab.cpu.fused import fused_ops
from sft_lab.cpu.loss import answer_loss
from sft_lab.templates import IGNORE
from sft_lab.cpu.passes import passes_unpadded


def right_padded_batch(lengths: list[int], seed: int = 1):
    torch.manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(0, 1000, (len(lengths), width))
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    labels = ids.masked_fill(mask == 0, IGNORE)
    labels[:, 1:3] = IGNORE  # a prompt
    labels[0, 1] = ids[0, 1]  # a label on the second token: the first one predicted
    labels[:, 0] = ids[:, 0]  # as with train_on_prompt: never a target, nothing predicts it
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}, labels


def loss_and_grads(model, passes):
    """Summed answer loss and LoRA gradients over (inputs, labels, laid end to end?) passes."""
    model.zero_grad(set_to_none=True)
    head, total, tokens = model.get_output_embeddings(), 0.0, 0
    for inputs, labels, by_rows in passes:
        with unpadded.rows_attention(model) if by_rows else torch.enable_grad():
            loss, n = answer_loss(model, head, inputs, labels)
        loss.backward()
        total, tokens = total + loss.item(), tokens + int(n)
    return total, tokens, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overrides, fused", [([], False), (["model.arch.num_key_value_heads=2"], True)],
                         ids=["peft-modules", "fused-grouped-query"])
def test_rows_laid_end_to_end_give_the_padded_batchs_loss_and_gradients(overrides, fused):
    model = tiny_lora_model(*overrides)
    lengths = [23, 9, 17, 4]
    inputs, labels = right_padded_batch(lengths)
    with fused_ops(model, enabled=fused):
        want = loss_and_grads(model, [(inputs, labels, False)])
        split = passes_unpadded(lengths, 32)
        assert split == [[0, 1], [2, 3]]  # 23 + 9 and 17 + 4 tokens
        got = loss_and_grads(model, [(*unpadded.end_to_end(inputs, labels, rows, lengths), True) for rows in split])
    assert got[1] == want[1] == int((labels[:, 1:] != IGNORE).sum())
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    assert got[2].keys() == want[2].keys() and len(want[2]) == 2 * 7 * model.config.num_hidden_layers
    for name, grad in want[2].items():
        assert torch.allclose(got[2][name], grad, rtol=1e-4, atol=1e-6), name


def test_a_laid_out_row_restarts_positions_and_drops_each_rows_first_label():
    inputs, labels = right_padded_batch([5, 3])
    part, part_labels = unpadded.end_to_end(inputs, labels, [1, 0], [5, 3])
    assert part["input_ids"].tolist() == [inputs["input_ids"][1, :3].tolist() + inputs["input_ids"][0, :5].tolist()]
    assert part["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    assert part["row_bounds"] == [0, 3, 8]
    assert labels[0, 0] != IGNORE and labels[1, 0] != IGNORE
    assert part_labels[0, 0] == part_labels[0, 3] == IGNORE  # no row predicts its first token from the row before
    assert part_labels[0, 4] == labels[0, 1]
    assert "attention_mask" not in part


@pytest.mark.parametrize("lengths, budget, want", [
    ([100, 300, 200, 50], 512, [[1, 2], [0, 3]]),  # first fit by decreasing length
    ([600, 20], 512, [[0], [1]]),  # a row longer than the budget runs alone
    ([10, 10, 10], 512, [[0, 1, 2]]),
    ([], 512, []),
])
def test_unpadded_passes_keep_each_within_the_token_budget(lengths, budget, want):
    got = passes_unpadded(lengths, budget)
    assert got == want
    assert sorted(i for rows in got for i in rows) == list(range(len(lengths)))
    assert all(len(rows) == 1 or sum(lengths[i] for i in rows) <= budget for rows in got)


def test_only_sdpa_models_without_a_shorter_sliding_window_or_checkpointing_are_laid_out():
    model = tiny_lora_model()
    assert unpadded.applies(model, 256)
    model.config.sliding_window = 128
    assert not unpadded.applies(model, 256) and unpadded.applies(model, 128)
    model.config.sliding_window = None
    model.gradient_checkpointing_enable()  # it recomputes the forward after the pass: with the model's attention
    assert not unpadded.applies(model, 256)
    model.gradient_checkpointing_disable()
    assert unpadded.applies(model, 256)
    eager = tiny_lora_model("model.attn_implementation=eager")
    assert not unpadded.applies(eager, 256)


def test_the_rows_attention_refuses_a_forward_that_was_not_laid_out():
    model = tiny_lora_model()
    inputs, labels = right_padded_batch([5, 3])
    with unpadded.rows_attention(model), pytest.raises(RuntimeError, match="laid out"):
        model(**inputs)
    assert model.config._attn_implementation == "sdpa"  # restored


def test_a_flattened_batch_trains_as_the_padded_batch_in_the_models_own_loss():
    """train.padding_free (the GPU path): the collator lays the batch's examples end to end, position ids
    restarting, no mask; the model's own loss and the LoRA gradients match the padded batch's."""
    from sft_lab.tokens import Collator

    model = tiny_lora_model()
    torch.manual_seed(3)
    rows = []
    for n in (23, 9, 17, 4):
        ids = torch.randint(1, 1000, (n,)).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * 2 + ids[2:], "source": "s"})
    rows.append({"input_ids": rows[0]["input_ids"][:6] + rows[1]["input_ids"][:5], "lengths": [6, 5],
                 "sources": ["s", "t"], "labels": rows[0]["labels"][:6] + [IGNORE] + rows[1]["labels"][1:5]})  # packed

    def run(batch):
        model.zero_grad(set_to_none=True)
        batch = {k: v for k, v in batch.items() if k != "counts"}
        n = int((batch["labels"][..., 1:] != IGNORE).sum())
        loss = model(**batch, num_items_in_batch=n).loss
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    padded, flat = Collator(0)(rows), Collator(0, flatten=True)(rows)
    assert flat["input_ids"].shape == (1, 23 + 9 + 17 + 4 + 11) and "attention_mask" not in flat
    assert flat["position_ids"][0, :25].tolist() == [*range(23), 0, 1]
    assert flat["counts"]["sources"] == padded["counts"]["sources"]
    want, got = run(padded), run(flat)
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    for name, grad in want[1].items():
        assert torch.allclose(got[1][name], grad, rtol=1e-4, atol=1e-6), name


def test_the_trainer_takes_flattened_batches(tmp_path):
    """The Trainer's own step on flattened batches (no attention mask, a use_cache flag) logs the padded
    batches' losses, with no padding counted."""
    from transformers import TrainingArguments

    from sft_lab.cpu import FastPath
    from sft_lab.tokens import Collator
    from sft_lab.trainer import Counts, CountingTrainer

    torch.manual_seed(5)
    rows = []
    for n in (12, 30, 7, 19, 25, 5, 14, 9):
        ids = torch.randint(1, 1000, (n,)).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * 3 + ids[3:], "source": "s"})
    losses, counts = {}, {}
    for flat in (False, True):
        model = tiny_lora_model()
        args = TrainingArguments(output_dir=str(tmp_path / str(flat)), max_steps=2, per_device_train_batch_size=4,
                                 learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, seed=0,
                                 remove_unused_columns=False, save_strategy="no", disable_tqdm=True)
        counts[flat] = Counts()
        trainer = CountingTrainer(model=model, args=args, train_dataset=rows, data_collator=Collator(0, flatten=flat),
                                  fast_path=FastPath(), counts=counts[flat])
        trainer.train()
        losses[flat] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert counts[True].padded_tokens == counts[True].real_tokens < counts[False].padded_tokens
