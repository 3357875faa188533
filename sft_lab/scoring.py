"""lm-eval's `hf` model, scoring only what lm-eval scores.

lm-eval's HFLM applies the LM head and a full-vocabulary log-softmax at every position of every
request, then keeps the continuation's few positions. `ContinuationLM` runs the same forward pass
but applies the head and log-softmax only at continuation positions, and batches requests by tokens,
not by count. (Encoding a shared multiple-choice context once, from cached keys and values, was
measured slower on CPU one question at a time: 0.71x on SmolLM2; it needs batching across questions.) Same tasks, metrics, protocol and per-item samples: only `_loglikelihood_tokens` is
replaced, and its results match HFLM's per item (tests/test_scoring.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

# A batch holds eval.batch_size x this many tokens. On 2 CPU cores (SmolLM2 + LoRA, ARC-Easy and PIQA)
# 40 ran 1.18x lm-eval's hf, 80 1.11x, 256 0.84x: big batches spill the caches. Raise eval.batch_size on GPUs.
TOKENS_PER_ROW = 40


class ContinuationLM(HFLM):
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        results: list = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        self._score_batched(requests, override_bs, results, pbar)
        pbar.close()
        return results

    def _finish(self, requests, i: int, logprobs: torch.Tensor, results: list, pbar) -> None:
        """One request's (sum of continuation log-probs, greedy) from its continuation positions' log-probs."""
        cont = torch.tensor(requests[i][2], device=logprobs.device)
        answer = (float(logprobs.gather(1, cont[:, None]).sum()), bool((logprobs.argmax(-1) == cont).all()))
        results[i] = answer
        if requests[i][0] is not None:
            self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        pbar.update(1)

    def _score_batched(self, requests, override_bs, results: list, pbar) -> None:
        """Requests batched by tokens, the longest first."""
        budget = int(override_bs or self.batch_size if str(self.batch_size) != "auto" else 16) * TOKENS_PER_ROW
        # (context + continuation) cut to the model's window, last token dropped: as HFLM builds it
        inputs = [(ctx + cont)[-(self.max_length + 1):][:-1] for _, ctx, cont in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(inputs[i]))
        head = self.model.get_output_embeddings()
        start = 0
        while start < len(order):
            width = len(inputs[order[start]])  # the longest row of the batch comes first
            rows = max(1, budget // max(width, 1))
            batch = order[start:start + rows]
            start += len(batch)
            ids = torch.full((len(batch), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(inputs[i])] = torch.tensor(inputs[i])  # right-padded; causal attention ignores pads
            with torch.no_grad():
                hidden = self.model(ids.to(self.device), output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
                spans = []
                for row, i in enumerate(batch):
                    n, k = len(inputs[i]), len(requests[i][2])
                    if k > n:
                        raise ValueError(f"a continuation of {k} tokens does not fit the model's {self.max_length}-"
                                         f"token window (request {requests[i][0]!r:.200})")
                    spans.append(hidden[row, n - k:n])
                logprobs = F.log_softmax(head(torch.cat(spans).to(head.weight.dtype)).float(), dim=-1)
            offset = 0
            for i in batch:
                k = len(requests[i][2])
                self._finish(requests, i, logprobs[offset:offset + k], results, pbar)
                offset += k
