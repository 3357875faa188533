"""Greedy generation with a key/value cache and continuous batching: lm-eval's `generate_until`, faster.

lm-eval's `hf` model generates in fixed batches, each running until its longest answer stops, so one
answer that writes to the token limit keeps its whole batch busy. Here prompts wait in a queue sorted
by length; a finished answer leaves the batch at once, and waiting prompts are prefilled and merged
into the running batch's cache (left-padded to a common length) to take its place. Stopping is
lm-eval's: the end-of-sequence token or any `until` string, and the answer is cut at the first stop
string as lm-eval cuts it. benchmarks/speed/generate_throughput.py compares the two side by side.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicLayer

SKINNY_ROWS = 128  # up to this many rows a projection runs as W x^T: 1.3-1.5x F.linear's x W^T here (MKL, 2 cores)
REFILL_SHARE = 4  # refill once a quarter of the batch is free (or the batch is empty): fewer, larger prefills
TAIL_TOKENS = 8  # stop strings are looked for in the decoded last tokens, plus their own length
CPU_ROWS, MAX_ROWS = 32, 512  # eval.gen_batch_size=null: rows on a CPU; the most on a GPU


@dataclass
class Answer:
    text: str
    tokens: int  # answer tokens generated (the stop token included)
    stopped: bool  # ended at end of turn / EOS / a stop string before the token limit


@dataclass
class _Row:
    index: int
    until: list[str]
    max_new: int
    generated: list[int] = field(default_factory=list)
    stopped: bool = False


def stop_token_ids(tokenizer, model, until: list[str]) -> set[int]:
    """EOS ids (tokenizer and generation config), and stop strings that are one special token."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for s in until:
        if s in special:
            ids.add(tokenizer.convert_tokens_to_ids(s))
    return ids


def cut(text: str, until: list[str]) -> str:
    """lm-eval's answer: the text before the first occurrence of each stop string in turn."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of key/value cache one token of one row takes, over all layers."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()


def auto_rows(model, prompts: list[list[int]], max_new: list[int], free_bytes: int | None = None) -> int:
    """eval.gen_batch_size=null: CPU_ROWS off CUDA; on a GPU the rows whose cache, at the longest prompt plus
    its answer limit, fits in half the free device memory (at most MAX_ROWS, and no more than the prompts)."""
    device = next(model.parameters()).device
    if device.type != "cuda" and free_bytes is None:
        return min(CPU_ROWS, max(1, len(prompts)))
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    tokens = max((len(p) + n for p, n in zip(prompts, max_new)), default=1)
    per_row = tokens * kv_bytes_per_token(model.config, next(model.parameters()).dtype)
    return max(1, min(MAX_ROWS, len(prompts), free_bytes // 2 // per_row))


class Generator:
    """Greedy answers for many prompts, as one continuous batch of at most `batch_size` rows (None: auto_rows)."""

    def __init__(self, model, tokenizer, batch_size: int | None = 16, pad_id: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = None if batch_size is None else max(1, int(batch_size))
        self.pad_id = pad_id if pad_id is not None else (tokenizer.pad_token_id or 0)
        self.device = next(model.parameters()).device

    def generate(self, prompts: list[list[int]], until: list[list[str]], max_new: list[int],
                 progress: bool = True) -> list[Answer]:
        """prompts: token ids; until: stop strings per prompt; max_new: answer token limit per prompt."""
        stops = [stop_token_ids(self.tokenizer, self.model, u) for u in until]
        if self.batch_size is None:
            self.batch_size = auto_rows(self.model, prompts, max_new)
        waiting = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first, as lm-eval
        answers: list[Answer | None] = [None] * len(prompts)
        rows: list[_Row] = []
        cache, mask, last = None, None, None
        bar = tqdm(total=len(prompts), desc="Generating (greedy, continuous batch)", disable=not progress)
        self.model.eval()
        with torch.inference_mode(), skinny_linears(self.model):
            while waiting or rows:
                free = self.batch_size - len(rows)
                if waiting and (not rows or free * REFILL_SHARE >= self.batch_size):
                    take = [waiting.pop(0) for _ in range(min(free, len(waiting)))]
                    new_cache, new_mask, first = self._prefill([prompts[i] for i in take])
                    cache, mask = (new_cache, new_mask) if cache is None else _merge(cache, mask, new_cache, new_mask)
                    fresh = len(rows)  # only the new rows have a token to take in this round
                    rows += [_Row(i, until[i], max_new[i]) for i in take]
                    last = first if last is None else torch.cat([last, first])
                else:
                    fresh = 0
                    positions = mask.sum(dim=1, keepdim=True)
                    mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                    out = self.model(input_ids=last[:, None], attention_mask=mask, position_ids=positions,
                                     cache=cache, use_cache=True)
                    cache, last = out.cache, out.logits[:, -1].argmax(-1)
                keep = list(range(fresh))
                for r, (row, token) in enumerate(zip(rows[fresh:], last[fresh:].tolist()), start=fresh):
                    if self._step(row, token, stops[row.index]):
                        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
                        answers[row.index] = Answer(cut(text, row.until), len(row.generated), row.stopped)
                        bar.update(1)
                    else:
                        keep.append(r)
                if len(keep) < len(rows):
                    rows = [rows[r] for r in keep]
                    if rows:
                        index = torch.tensor(keep, device=self.device)
                        cache.batch_select_indices(index)
                        mask, last = mask[index], last[index]
                        cache, mask = _trim(cache, mask)
                    else:
                        cache, mask, last = None, None, None
        bar.close()
        return answers  # type: ignore[return-value]

    def _step(self, row: _Row, token: int, stops: set[int]) -> bool:
        """Adds a token to a row; True when the row is done."""
        row.generated.append(token)
        if token in stops:
            row.generated.pop()  # the answer's text never holds the end-of-turn token
            row.stopped = True
            return True
        if row.until:
            width = TAIL_TOKENS + max(len(s) for s in row.until)
            tail = self.tokenizer.decode(row.generated[-width:], skip_special_tokens=False)
            if any(s and s in tail for s in row.until):
                row.stopped = True
                return True
        return len(row.generated) >= row.max_new

    def _prefill(self, prompts: list[list[int]]):
        """Left-padded prompts through the model: (cache, attention mask, first greedy tokens)."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        return _buffered(out.cache), mask, out.logits[:, -1].argmax(-1)


ROOM = 64  # cache positions allocated ahead, so a decode step writes in place instead of concatenating


def _buffered(cache):
    """A prefilled cache whose layers write new positions into preallocated buffers (DynamicCache
    concatenates every step, copying the whole cache: 37% of a batch-16 step here)."""
    if any(type(layer) is not DynamicLayer for layer in cache.layers):  # sliding windows etc.: rows not mergeable
        raise Unsupported(f"cache layers {sorted({type(l).__name__ for l in cache.layers})}")
    cache.layers = [_Buffered(layer.keys, layer.values) for layer in cache.layers]
    return cache


@contextlib.contextmanager
def skinny_linears(model):
    """While decoding, every plain nn.Linear computes its few rows as (W x^T)^T: the same products, which
    MKL runs 1.3-1.5x faster at 16-64 rows than F.linear (benchmarks/speed/generate_throughput.py profiles it).
    The modules' own forwards come back after."""
    swapped = []
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            swapped.append(module)
            module.forward = _skinny_forward.__get__(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward


def _skinny_forward(self, x):
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] > SKINNY_ROWS:
        return F.linear(x, self.weight, self.bias)
    y = torch.mm(self.weight, rows.t()).t()
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], self.weight.shape[0])


class Unsupported(Exception):
    """A model whose cache cannot be merged row-wise: generate with lm-eval's hf path instead."""


class _Buffered(DynamicLayer):
    """`keys`/`values` are views of the first `n` positions of buffers with room to grow."""

    def __init__(self, keys, values):
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self.kbuf, self.vbuf, self.n = keys, values, keys.shape[2]
        self._grow(ROOM)

    def _grow(self, room: int) -> None:
        b, h, _, d = self.kbuf.shape
        for name in ("kbuf", "vbuf"):
            old = getattr(self, name)
            new = old.new_zeros((b, h, self.n + room, d))
            new[:, :, :self.n] = old[:, :, :self.n]
            setattr(self, name, new)
        self._view()

    def _view(self) -> None:
        self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]

    def update(self, key_states, value_states, *args, **kwargs):
        t = key_states.shape[2]
        if self.n + t > self.kbuf.shape[2]:
            self._grow(max(ROOM, t))
        self.kbuf[:, :, self.n:self.n + t] = key_states
        self.vbuf[:, :, self.n:self.n + t] = value_states
        self.n += t
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices) -> None:
        self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]
        self._view()

    def pad_left(self, by: int) -> None:
        b, h, _, d = self.kbuf.shape
        self.kbuf = torch.cat([self.kbuf.new_zeros((b, h, by, d)), self.kbuf], dim=2)
        self.vbuf = torch.cat([self.vbuf.new_zeros((b, h, by, d)), self.vbuf], dim=2)
        self.n += by
        self._view()

    def append_rows(self, other: "_Buffered") -> None:
        keys, values = torch.cat([self.keys, other.keys]), torch.cat([self.values, other.values])
        self.kbuf, self.vbuf, self.n = keys, values, keys.shape[2]
        self._grow(ROOM)

    def drop_left(self, start: int) -> None:
        self.kbuf, self.vbuf, self.n = self.kbuf[:, :, start:], self.vbuf[:, :, start:], self.n - start
        self._view()



def _merge(cache, mask, new_cache, new_mask):
    """The running batch and newly prefilled rows as one batch: both left-padded to one length."""
    width = max(mask.shape[1], new_mask.shape[1])
    for c, m in ((cache, mask), (new_cache, new_mask)):
        if width > m.shape[1]:
            for layer in c.layers:
                layer.pad_left(width - m.shape[1])
    mask = torch.cat([mask.new_zeros((mask.shape[0], width - mask.shape[1])), mask], dim=1)
    new_mask = torch.cat([new_mask.new_zeros((new_mask.shape[0], width - new_mask.shape[1])), new_mask], dim=1)
    for layer, new in zip(cache.layers, new_cache.layers):
        layer.append_rows(new)
    return cache, torch.cat([mask, new_mask])


def _trim(cache, mask):
    """Drops leading cache positions that are padding in every remaining row."""
    start = int((mask.sum(dim=0) > 0).nonzero()[0])
    if start == 0:
        return cache, mask
    for layer in cache.layers:
        layer.drop_left(start)
    return cache, mask[:, start:]


# ---------------------------------------------------------------- lm-eval


from sft_lab.scoring import ContinuationLM  # noqa: E402


class EvalLM(ContinuationLM):
    """lm-eval's model: continuation scoring (sft_lab.scoring) and greedy generation (`Generator`).

    Greedy requests go through `Generator`; sampled ones, and models whose cache rows cannot be merged,
    through lm-eval's own `generate_until`. `answers` keeps each request's Answer (tokens, stopped),
    by (context, until, max_gen_toks), for the per-item `stopped` metric."""

    gen_batch_size: int | None = 32  # rows of the continuous batch (eval.gen_batch_size; None: by device)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers: dict[str, Answer] = {}

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        greedy, sampled = [], []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            (sampled if kwargs.get("do_sample") else greedy).append((i, context, kwargs))
        out: list = [None] * len(requests)
        if greedy:
            prompts, until, limits = [], [], []
            for _, context, kwargs in greedy:
                stops = handle_stop_sequences(kwargs.get("until"), eos=eos)
                max_new = int(kwargs["max_gen_toks"])
                if self.max_length - max_new <= 0:
                    raise ValueError(f"max_gen_toks={max_new} leaves no room for a prompt in the model's "
                                     f"{self.max_length}-token window")
                prompts.append(self.tok_encode(context, left_truncate_len=self.max_length - max_new))
                until.append(stops)
                limits.append(max_new)
            try:
                answers = Generator(self.model, self.tokenizer, self.gen_batch_size).generate(
                    prompts, until, limits, progress=not disable_tqdm and self.rank == 0)
            except Unsupported:
                answers = None
            if answers is None:
                sampled, greedy = sorted(sampled + greedy), []
            for (i, context, kwargs), stops, answer in zip(greedy, until, answers or []):
                text = postprocess_generated_text(answer.text, stops, None)
                out[i] = text
                self.answers[context] = Answer(text, answer.tokens, answer.stopped)
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        if sampled:
            texts = super().generate_until([requests[i] for i, _, _ in sampled], disable_tqdm)
            for (i, _, _), text in zip(sampled, texts):
                out[i] = text
        return out

