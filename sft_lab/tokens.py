"""Mixture -> tokenised train/held-out sets with per-source token accounting, cached on disk.

The cache key covers the data fingerprint, the template, the tokenizer and max_length, so the
runs of a sweep over learning rates or ranks tokenise once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_lab.files import atomic_write
from sft_lab.templates import IGNORE, fingerprint_template, tokenise

log = logging.getLogger(__name__)


@dataclass
class TokenisedData:
    train: list[dict[str, list[int]]]
    heldout: list[dict[str, list[int]]]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    key: str = ""
    from_cache: bool = False


def _encode(examples, template, tokenizer, max_length) -> tuple[list[dict], dict[str, int]]:
    rows, dropped = [], {}
    for ex in examples:
        t = tokenise(ex.conversation, template, tokenizer, max_length)
        if all(l == IGNORE for l in t.labels):  # truncation cut the whole answer away
            dropped[ex.source] = dropped.get(ex.source, 0) + 1
            continue
        rows.append({"input_ids": t.input_ids, "labels": t.labels, "source": ex.source, "truncated": t.truncated})
    return rows, dropped


def account(rows: list[dict], dropped: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per source: examples, tokens (non-padding), label tokens, truncated, dropped with no answer left."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        acc = out.setdefault(row["source"], {"examples": 0, "tokens": 0, "label_tokens": 0, "truncated": 0})
        acc["examples"] += 1
        acc["tokens"] += len(row["input_ids"])
        acc["label_tokens"] += sum(l != IGNORE for l in row["labels"])
        acc["truncated"] += row["truncated"]
    for source, n in dropped.items():
        out.setdefault(source, {"examples": 0, "tokens": 0, "label_tokens": 0, "truncated": 0})["no_answer_dropped"] = n
    return out


def cut_to_token_budget(rows: list[dict], budget: int) -> list[dict]:
    """The shuffled mixture's prefix holding `budget` non-padding tokens (the last row may cross it)."""
    total = 0
    for i, row in enumerate(rows):
        total += len(row["input_ids"])
        if total >= budget:
            return rows[: i + 1]
    from sft_lab.data import DataError

    raise DataError(f"data.tokens={budget} exceeds the {total} tokens the mixture holds; lower it or size the "
                    "mixture with data.examples (upsampling is allowed there)")


def data_key(mixture, template, tokenizer, max_length: int) -> str:
    """The tokenised data's identity: the mixture's content, the template as rendered, and max_length."""
    return hashlib.sha256(
        f"{mixture.fingerprint}:{fingerprint_template(template, tokenizer)}:{max_length}".encode()).hexdigest()[:16]


def tokenise_mixture(mixture, template, tokenizer, max_length: int, cache_dir: str | None,
                     token_budget: int | None = None, prompt_loss: bool = False,
                     packing: bool = False) -> TokenisedData:
    """Tokenise train and held-out sets; the key (data_key) is also the run's data fingerprint."""
    key = data_key(mixture, template, tokenizer, max_length)
    path = Path(cache_dir) / "tokens" / f"{key}.npz" if cache_dir else None
    cached = _read_cache(path, len(tokenizer))
    if cached is None:
        from tqdm.auto import tqdm

        train, dropped = _encode(tqdm(mixture.train, desc="tokenise", mininterval=2), template, tokenizer, max_length)
        heldout, _ = _encode(mixture.heldout, template, tokenizer, max_length)
        _write_cache(path, (train, dropped, heldout))
    else:
        train, dropped, heldout = cached
    if token_budget:
        train = cut_to_token_budget(train, token_budget)
    if prompt_loss:
        train = train_on_prompt(train)
    sources = account(train, dropped)
    if packing:
        train = pack(train, max_length)
    return TokenisedData(train=train, heldout=heldout, sources=sources, key=key, from_cache=cached is not None)


CACHE_VERSION = 1


def _read_cache(path: Path | None, vocab_size: int | None = None):
    """(train, dropped, heldout) from an .npz written by _write_cache; anything unreadable or ill-shaped
    is a miss and gets rebuilt. NumPy arrays only, loaded with allow_pickle=False: no code runs."""
    if not (path and path.is_file()):
        return None
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != CACHE_VERSION:
                raise ValueError(f"cache version {meta.get('version')}")
            names = [str(n) for n in z["sources"]]
            splits = [_unpack(z, split, names, vocab_size) for split in ("train", "heldout")]
        dropped = {str(k): int(v) for k, v in meta["dropped"].items()}
    except Exception as e:  # a corrupt or foreign cache entry is rebuilt, never trusted
        log.warning("Ignoring unreadable token cache %s (%s: %s); rebuilding it", path, type(e).__name__, e)
        return None
    log.info("Tokenised data from cache %s", path)
    return splits[0], dropped, splits[1]


def _unpack(z, split: str, names: list[str], vocab_size: int | None = None) -> list[dict]:
    ids, labels, offsets = z[f"{split}_ids"], z[f"{split}_labels"], z[f"{split}_offsets"]
    if vocab_size and len(ids) and (ids.min() < 0 or ids.max() >= vocab_size or labels.max() >= vocab_size):
        raise ValueError(f"{split}: token ids outside the tokenizer's {vocab_size}-word vocabulary")
    source, truncated = z[f"{split}_source"], z[f"{split}_truncated"]
    n = len(offsets) - 1
    if not (ids.shape == labels.shape and len(source) == len(truncated) == n and offsets[0] == 0
            and offsets[-1] == len(ids) and (offsets[1:] >= offsets[:-1]).all() and ids.ndim == 1
            and ids.dtype.kind == "i" and labels.dtype.kind == "i" and (source < len(names)).all()):
        raise ValueError(f"{split}: arrays of inconsistent shapes")
    return [{"input_ids": ids[offsets[i]:offsets[i + 1]].tolist(), "labels": labels[offsets[i]:offsets[i + 1]].tolist(),
             "source": names[source[i]], "truncated": bool(truncated[i])} for i in range(n)]


def _write_cache(path: Path | None, value) -> None:
    if not path:
        return
    import numpy as np

    train, dropped, heldout = value
    names = sorted({r["source"] for r in train + heldout} | set(dropped))
    arrays = {"sources": np.array(names, dtype=str),
              "meta": np.array(json.dumps({"version": CACHE_VERSION, "dropped": dropped}))}
    for split, rows in (("train", train), ("heldout", heldout)):
        lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arrays[f"{split}_ids"] = np.array([t for r in rows for t in r["input_ids"]], dtype=np.int64)
        arrays[f"{split}_labels"] = np.array([t for r in rows for t in r["labels"]], dtype=np.int64)
        arrays[f"{split}_source"] = np.array([names.index(r["source"]) for r in rows], dtype=np.int32)
        arrays[f"{split}_truncated"] = np.array([r["truncated"] for r in rows], dtype=bool)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def train_on_prompt(rows: list[dict]) -> list[dict]:
    """Every real token is a label: the loss sees the prompt too (train.train_on_prompt)."""
    return [{**row, "labels": list(row["input_ids"])} for row in rows]


def pack(rows: list[dict], max_length: int) -> list[dict]:
    """Consecutive examples packed into rows of at most max_length tokens (train.packing).

    A packed row keeps each example's length and source; the collator restarts position ids and
    masks attention per example, and the first token of each later example is no label (it would be
    predicted from the example before)."""
    packs: list[dict] = []
    for row in rows:
        n = len(row["input_ids"])
        if not packs or sum(packs[-1]["lengths"]) + n > max_length:
            packs.append({"input_ids": [], "labels": [], "lengths": [], "sources": [], "truncated": False})
        p = packs[-1]
        labels = list(row["labels"])
        if p["lengths"]:
            labels[0] = IGNORE
        p["input_ids"] += row["input_ids"]
        p["labels"] += labels
        p["lengths"].append(n)
        p["sources"].append(row["source"])
    return packs


class Collator:
    """Dynamic padding to the longest row in the batch; packed rows get per-example position ids and a
    block-diagonal causal mask (4D, additive), so no example attends to another.

    The batch also carries `counts` (per source: examples, tokens, label tokens; and padded size),
    which the trainer adds up for the batches it actually trains on.
    """

    def __init__(self, pad_token_id: int, flatten: bool = False):
        self.pad_token_id, self.flatten = pad_token_id, flatten

    def __call__(self, batch: list[dict]):
        import torch

        if self.flatten:
            return self.flat(batch)
        width = max(len(row["input_ids"]) for row in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        packed = any(len(row.get("lengths", ())) > 1 for row in batch)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        segment = torch.full((len(batch), width), -1, dtype=torch.long)  # padding: its own segment
        counts: dict[str, dict[str, int]] = {}
        for i, row in enumerate(batch):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
            start = 0
            for k, (length, source) in enumerate(zip(row.get("lengths", [n]), row.get("sources", [row.get("source", "?")]))):
                positions[i, start:start + length] = torch.arange(length)
                segment[i, start:start + length] = k
                c = counts.setdefault(source, {"examples": 0, "tokens": 0, "label_tokens": 0})
                c["examples"] += 1
                c["tokens"] += length
                c["label_tokens"] += sum(l != IGNORE for l in row["labels"][start:start + length])
                start += length
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask,
               "counts": {"sources": counts, "padded_tokens": len(batch) * width}}
        if packed:
            causal = torch.ones((width, width), dtype=torch.bool).tril()
            same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)
            keep = (same & causal) | torch.eye(width, dtype=torch.bool)  # a pad attends to itself: no empty row
            additive = torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, torch.finfo(torch.float32).min)
            out.update(attention_mask=additive[:, None], position_ids=positions)
        return out

    def flat(self, batch: list[dict]) -> dict:
        """Padding-free (train.padding_free, on a GPU): every example of the batch, packed rows' too, end to end in
        one row with restarting position ids, no attention mask and no cache. transformers finds the examples from the
        position ids (a block-diagonal causal mask for SDPA, varlen for flash attention); each example's first
        label is dropped, as it would be predicted from the example before."""
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        counts: dict[str, dict[str, int]] = {}
        for row in batch:
            n, start = len(row["input_ids"]), 0
            for length, source in zip(row.get("lengths", [n]), row.get("sources", [row.get("source", "?")])):
                part = list(row["labels"][start:start + length])
                c = counts.setdefault(source, {"examples": 0, "tokens": 0, "label_tokens": 0})
                c["examples"] += 1
                c["tokens"] += length
                c["label_tokens"] += sum(l != IGNORE for l in part)
                ids += row["input_ids"][start:start + length]
                labels += [IGNORE, *part[1:]]
                positions += range(length)
                start += length
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions]), "counts": {"sources": counts, "padded_tokens": len(ids)},
                "use_cache": False}  # with a cache, transformers does not look for the examples in the position ids
