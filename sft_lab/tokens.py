"""Mixture -> tokenised train/held-out sets with per-source token accounting, cached on disk.

The cache key covers the data fingerprint, the template, the tokenizer and max_length, so the
runs of a sweep over learning rates or ranks tokenise once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def tokenise_mixture(mixture, template, tokenizer, max_length: int, cache_dir: str | None,
                     token_budget: int | None = None) -> TokenisedData:
    """Tokenise train and held-out sets; the key is also the run's data fingerprint."""
    key = hashlib.sha256(
        f"{mixture.fingerprint}:{fingerprint_template(template, tokenizer)}:{max_length}".encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / "tokens" / f"{key}.pkl" if cache_dir else None
    cached = _read_cache(path)
    if cached is None:
        from tqdm.auto import tqdm

        train, dropped = _encode(tqdm(mixture.train, desc="tokenise", mininterval=2), template, tokenizer, max_length)
        heldout, _ = _encode(mixture.heldout, template, tokenizer, max_length)
        _write_cache(path, (train, dropped, heldout))
    else:
        train, dropped, heldout = cached
    if token_budget:
        train = cut_to_token_budget(train, token_budget)
    return TokenisedData(train=train, heldout=heldout, sources=account(train, dropped), key=key,
                         from_cache=cached is not None)


def _read_cache(path: Path | None):
    if not (path and path.is_file()):
        return None
    try:
        with open(path, "rb") as fh:
            log.info("Tokenised data from cache %s", path)
            return pickle.load(fh)
    except Exception as e:  # a corrupt cache entry is rebuilt, never trusted
        log.warning("Ignoring unreadable token cache %s (%s)", path, e)
        return None


def _write_cache(path: Path | None, value) -> None:
    if not path:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


class Collator:
    """Dynamic padding to the longest sequence in the batch.

    The batch also carries `counts` (per source: examples, tokens, label tokens; and padded size),
    which the trainer adds up for the batches it actually trains on.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]):
        import torch

        width = max(len(row["input_ids"]) for row in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        counts: dict[str, dict[str, int]] = {}
        for i, row in enumerate(batch):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
            c = counts.setdefault(row.get("source", "?"), {"examples": 0, "tokens": 0, "label_tokens": 0})
            c["examples"] += 1
            c["tokens"] += n
            c["label_tokens"] += sum(l != IGNORE for l in row["labels"])
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "counts": {"sources": counts, "padded_tokens": len(batch) * width}}
