"""lm-eval's `hf` model, scoring only what lm-eval scores.

lm-eval's HFLM applies the LM head and a full-vocabulary log-softmax at every position of every
request, then keeps the continuation's few positions, and runs a multiple-choice question's context
once per choice. `ContinuationLM` applies the head and log-softmax only at continuation positions,
runs a shared context once with all its choices in one row (a block mask keeps each choice to the
context and itself), and batches rows by tokens, not by count. Same tasks, metrics, protocol and
per-item samples: only `_loglikelihood_tokens` is replaced, and its results match HFLM's per item
(tests/test_scoring.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

# A batch holds eval.batch_size x this many tokens, by device. On 2 CPU cores (SmolLM2 + LoRA, ARC-Easy and
# PIQA) 40 ran 1.18x lm-eval's hf, 80 1.11x, 256 0.84x: big batches spill the caches. On a GPU a batch of
# rows fills the device instead (512 a row: not yet measured on a GPU).
TOKENS_PER_ROW = {"cpu": 40, "cuda": 512}
AUTO_GPU_ROWS = 256  # eval.batch_size=null on a GPU: the first try, halved on out-of-memory


def tokens_per_row(device) -> int:
    return TOKENS_PER_ROW.get(torch.device(device).type, TOKENS_PER_ROW["cuda"])


class ContinuationLM(HFLM):
    row_tokens: int | None = None  # tokens a row in a batch's budget; None: by device (TOKENS_PER_ROW)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        results: list = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        self._score_batched(requests, override_bs, results, pbar)
        pbar.close()
        return results

    def _finish(self, requests, i: int, scores: torch.Tensor, greedy: torch.Tensor, results: list, pbar) -> None:
        """One request's (sum of continuation log-probs, greedy) from its tokens' log-probs and greedy flags."""
        answer = (float(scores.sum()), bool(greedy.all()))
        results[i] = answer
        if requests[i][0] is not None:
            self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        pbar.update(1)

    def _score_batched(self, requests, override_bs, results: list, pbar) -> None:
        """Rows (a shared context with its continuations, or one request) batched by tokens, the longest first.
        eval.batch_size=null ("auto"): by device, and a batch that runs out of memory is halved and run again."""
        auto = str(self.batch_size).startswith("auto") and not override_bs
        rows_per_batch = int(override_bs or self.batch_size) if not auto else auto_rows(self.device)
        budget = rows_per_batch * (self.row_tokens or tokens_per_row(self.device))
        rows = sorted(score_rows(requests, self.max_length), key=lambda r: -len(r.tokens))
        start = 0
        while start < len(rows):
            width = len(rows[start].tokens)  # the longest row of the batch comes first
            batch = rows[start:start + max(1, budget // max(width, 1))]
            scored = [(i, r, where) for r, row in enumerate(batch) for i, where in row.scored]
            try:
                scores, greedy = self._score(requests, batch, width, scored)
            except Exception as err:
                if not (auto and len(batch) > 1 and out_of_memory(err)):
                    raise
                budget = len(batch) // 2 * width  # the same rows, in halves
                continue
            start += len(batch)
            offset = 0
            for i, _, where in scored:
                self._finish(requests, i, scores[offset:offset + len(where)], greedy[offset:offset + len(where)],
                             results, pbar)
                offset += len(where)

    def _score(self, requests, batch: list, width: int, scored: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The scored positions' log-probs of their targets and greedy flags, on the host."""
        head = self.model.get_output_embeddings()
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():  # no key/value cache: each row runs once
            hidden = self.model(**batch_inputs(batch, width, self.tokenizer.pad_token_id or 0, dtype, self.device),
                                output_hidden_states=True, logits_to_keep=1, use_cache=False).hidden_states[-1]
            logprobs = torch.log_softmax(head(torch.cat([hidden[r, where] for _, r, where in scored])
                                              .to(head.weight.dtype)).float(), dim=-1)
            target = torch.tensor([t for i, _, _ in scored for t in requests[i][2]], device=logprobs.device)
            scores = logprobs.gather(1, target[:, None]).squeeze(1).cpu()  # to the host once a batch
            greedy = (logprobs.argmax(-1) == target).cpu()
        return scores, greedy


def auto_rows(device) -> int:
    """eval.batch_size=null: 16 rows on a CPU (see TOKENS_PER_ROW); on a GPU a large start that
    out-of-memory halves."""
    return 16 if torch.device(device).type == "cpu" else AUTO_GPU_ROWS


def out_of_memory(err: BaseException) -> bool:
    """An out-of-memory error of the device, after which its cache is emptied for a smaller try."""
    from accelerate.utils.memory import release_memory, should_reduce_batch_size

    if not should_reduce_batch_size(err):
        return False
    release_memory()
    return True


@dataclass
class Row:
    """One sequence to run: its tokens, their position ids, their segments (0: the context or a lone
    request; k: the k-th continuation after a shared context; -1: padding), and for each request it
    scores, the row indices whose outputs predict that request's continuation tokens."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]
    scored: list[tuple[int, list[int]]]


def score_rows(requests, max_length: int) -> list[Row]:
    """The requests of a multiple-choice question share their context: one row holds the context once,
    then each continuation but its last token, at the positions it would have alone and attending only
    to the context and itself, so each choice's log-likelihood is the same as on its own row (as
    lm-eval's hf model builds it). A request that lm-eval would cut to the window gets its own row."""
    groups: dict[tuple, list[int]] = {}
    for i, (_, ctx, _cont) in enumerate(requests):
        groups.setdefault(tuple(ctx), []).append(i)
    rows = []
    for ctx, members in groups.items():
        n = len(ctx)
        if len(members) > 1 and n and all(n + len(requests[i][2]) <= max_length + 1 for i in members):
            row = Row(list(ctx), list(range(n)), [0] * n, [])
            for k, i in enumerate(members, 1):
                cont = requests[i][2]
                first = len(row.tokens)
                row.tokens += cont[:-1]
                row.positions += range(n, n + len(cont) - 1)
                row.segments += [k] * (len(cont) - 1)
                row.scored.append((i, [n - 1, *range(first, first + len(cont) - 1)]))
            rows.append(row)
            continue
        for i in members:
            _, ctx_i, cont = requests[i]
            tokens = (ctx_i + cont)[-(max_length + 1):][:-1]  # cut to the model's window, as HFLM does
            if len(cont) > len(tokens):
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit the model's {max_length}-"
                                 f"token window (request {requests[i][0]!r:.200})")
            rows.append(Row(tokens, list(range(len(tokens))), [0] * len(tokens),
                            [(i, list(range(len(tokens) - len(cont), len(tokens))))]))
    return rows


def batch_inputs(batch: list[Row], width: int, pad_id: int, dtype, device) -> dict:
    """Right-padded ids; rows with a shared context also get their position ids and a 4D additive mask
    (causal, and a continuation sees only the context and itself). Plain rows need neither."""
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for r, row in enumerate(batch):
        ids[r, :len(row.tokens)] = torch.tensor(row.tokens)
    if all(max(row.segments) == 0 for row in batch):
        return {"input_ids": ids.to(device)}  # causal attention ignores right padding
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    segments = torch.full((len(batch), width), -1, dtype=torch.long)
    for r, row in enumerate(batch):
        positions[r, :len(row.tokens)] = torch.tensor(row.positions)
        segments[r, :len(row.tokens)] = torch.tensor(row.segments)
    q, k = segments[:, :, None], segments[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    keep = (causal & (k >= 0) & ((k == 0) | (k == q))) | torch.eye(width, dtype=torch.bool)  # a pad sees itself
    mask = torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
    return {"input_ids": ids.to(device), "position_ids": positions.to(device), "attention_mask": mask[:, None].to(device)}
