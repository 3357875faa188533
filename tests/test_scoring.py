"""sft-lab's evaluation scores only continuation positions; per item it must agree with lm-eval's `hf` model."""

from __future__ import annotations

import pytest
from conftest import compose


def per_item(model, tokenizer, cls, tasks_dir, limit, row_tokens=None, batch_size=8):
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    if row_tokens:
        lm.row_tokens = row_tokens
    out = lm_eval.simple_evaluate(model=lm, tasks=["arc_easy", "piqa"], limit=limit, log_samples=True,
                                  task_manager=TaskManager(include_path=[str(tasks_dir)], include_defaults=False),
                                  bootstrap_iters=0)
    return {t: [[r[0] for r in s["resps"]] for s in rows] for t, rows in out["samples"].items()}, out["results"]


def check_against_hf(model_name: str, tmp_path, limit: int, adapter: bool = False, row_tokens=None) -> None:
    """adapter: lm-eval's hf scores base + a trained-like LoRA adapter; sft-lab scores what its pipeline
    evaluates, the adapter folded into the weights."""
    import copy

    import torch
    from lm_eval.models.huggingface import HFLM

    from sft_lab.models import add_lora, load_model, load_tokenizer, merged_for_eval
    from sft_lab.scoring import ContinuationLM
    from sft_lab.tasks import write_tasks

    cfg = compose([f"model={model_name}"])
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = load_model(cfg.model, tokenizer, cfg.paths.cache_dir, 0).eval()
    ours = model
    if adapter:
        model = add_lora(model, cfg.lora).eval()
        torch.manual_seed(0)
        for name, p in model.named_parameters():  # non-zero B: the adapter changes the model
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        ours = merged_for_eval(copy.deepcopy(model))
        assert not any("lora" in n for n, _ in ours.named_modules())
    write_tasks(tmp_path, cfg.paths.data_dir, [])
    want, want_results = per_item(model, tokenizer, HFLM, tmp_path, limit)
    got, got_results = per_item(ours, tokenizer, ContinuationLM, tmp_path, limit, row_tokens)
    if adapter:  # the adapter moved the scores, so the comparison is not of the base model twice
        base, _ = per_item(load_model(cfg.model, tokenizer, cfg.paths.cache_dir, 0).eval(), tokenizer, ContinuationLM,
                           tmp_path, limit)
        assert max(abs(a[0] - b[0]) for t in base for wa, ga in zip(base[t], got[t]) for a, b in zip(wa, ga)) > 1e-3
    for task in want:
        pairs = [(a, b) for wa, ga in zip(want[task], got[task]) for a, b in zip(wa, ga)]
        assert len(pairs) >= limit * 2
        assert max(abs(a[0] - b[0]) for a, b in pairs) < 1e-4, task  # log-likelihood per choice
        assert all(a[1] == b[1] for a, b in pairs), task  # greedy match
        assert got_results[task]["acc,none"] == want_results[task]["acc,none"]


@pytest.mark.slow  # runs lm-eval: the quick tier runs none
@pytest.mark.parametrize("row_tokens", [None, 8, 512])  # the CPU budget, one row a batch, a GPU-sized batch
def test_continuation_scoring_matches_lm_eval_hf_on_the_tiny_model(tmp_path, row_tokens):
    check_against_hf("tiny", tmp_path, limit=20, row_tokens=row_tokens)


@pytest.mark.slow
def test_a_folded_adapter_scores_as_lm_eval_hf_scores_base_plus_adapter(tmp_path):
    check_against_hf("tiny", tmp_path, limit=20, adapter=True)


@pytest.mark.slow
def test_continuation_scoring_matches_lm_eval_hf_on_smollm2(tmp_path):
    check_against_hf("smollm2_135m", tmp_path, limit=10)


@pytest.mark.slow
def test_a_folded_adapter_on_smollm2_scores_as_lm_eval_hf_base_plus_adapter(tmp_path):
    check_against_hf("smollm2_135m", tmp_path, limit=10, adapter=True)


@pytest.mark.slow  # runs lm-eval three times
def test_eval_batch_size_null_halves_a_batch_that_runs_out_of_memory_and_scores_the_same(tmp_path):
    """A model that runs out of memory above 3 rows: eval.batch_size=null ("auto") halves and retries the
    batch, and every item's scores are those of a fixed batch; a fixed batch size lets the error through."""
    from sft_lab.models import load_model, load_tokenizer
    from sft_lab.scoring import ContinuationLM
    from sft_lab.tasks import write_tasks

    tried = []

    class SmallDevice(ContinuationLM):
        def _score(self, requests, batch, width, scored):
            tried.append(len(batch))
            if len(batch) > 3:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super()._score(requests, batch, width, scored)

    cfg = compose(["model=tiny"])
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = load_model(cfg.model, tokenizer, cfg.paths.cache_dir, 0).eval()
    write_tasks(tmp_path, cfg.paths.data_dir, [])
    want, _ = per_item(model, tokenizer, ContinuationLM, tmp_path, 10, row_tokens=8)
    got, _ = per_item(model, tokenizer, SmallDevice, tmp_path, 10, batch_size="auto")
    assert max(tried) > 3 and tried[-1] <= 3  # the first batch did not fit; the halves did
    pairs = [(a, b) for t in want for wa, ga in zip(want[t], got[t]) for a, b in zip(wa, ga)]
    assert len(pairs) >= 40 and all(a[1] == b[1] for a, b in pairs)
    assert max(abs(a[0] - b[0]) for a, b in pairs) < 1e-4  # batches of other shapes: float noise only
    with pytest.raises(RuntimeError, match="out of memory"):
        per_item(model, tokenizer, SmallDevice, tmp_path, 10, batch_size=8)


def test_a_shared_context_is_one_row_and_each_choice_keeps_its_own_positions():
    from sft_lab.scoring import score_rows

    ctx = [5, 6, 7]
    requests = [(None, ctx, [8, 9]), (None, ctx, [10]), (None, [1, 2], [3]), (None, ctx, [11, 12, 13])]
    rows = score_rows(requests, max_length=64)
    shared = next(r for r in rows if len(r.scored) == 3)
    assert shared.tokens == [5, 6, 7, 8, 11, 12]  # each continuation but its last token
    assert shared.positions == [0, 1, 2, 3, 3, 4]  # as each would have alone
    assert dict(shared.scored) == {0: [2, 3], 1: [2], 3: [2, 4, 5]}  # the context's last output predicts each first token
    # a question that lm-eval would cut to the window is scored request by request, as lm-eval does
    assert all(len(r.scored) == 1 for r in score_rows(requests, max_length=4))
