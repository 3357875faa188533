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


def _encode(examples, template, tokenizer, max_length, accounting):
    rows = []
    for ex in examples:
        t = tokenise(ex.conversation, template, tokenizer, max_length)
        acc = accounting.setdefault(ex.source, {"tokens": 0, "label_tokens": 0, "truncated": 0, "no_labels_dropped": 0})
        n_labels = sum(l != IGNORE for l in t.labels)
        if n_labels == 0:  # truncation cut the whole answer away
            acc["no_labels_dropped"] += 1
            continue
        acc["tokens"] += len(t.input_ids)
        acc["label_tokens"] += n_labels
        acc["truncated"] += t.truncated
        rows.append({"input_ids": t.input_ids, "labels": t.labels})
    return rows


def tokenise_mixture(mixture, template, tokenizer, max_length: int, cache_dir: str | None) -> TokenisedData:
    key = hashlib.sha256(
        f"{mixture.fingerprint}:{fingerprint_template(template, tokenizer)}:{max_length}".encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / "tokens" / f"{key}.pkl" if cache_dir else None
    if path and path.is_file():
        try:
            with open(path, "rb") as fh:
                data = pickle.load(fh)
            data.from_cache = True
            log.info("Tokenised data from cache %s", path)
            return data
        except Exception as e:  # a corrupt cache entry is rebuilt, never trusted
            log.warning("Ignoring unreadable token cache %s (%s)", path, e)
    from tqdm.auto import tqdm

    accounting: dict[str, dict[str, int]] = {}
    train = _encode(tqdm(mixture.train, desc="tokenise", mininterval=2), template, tokenizer, max_length, accounting)
    heldout_acc: dict[str, dict[str, int]] = {}
    heldout = _encode(mixture.heldout, template, tokenizer, max_length, heldout_acc)
    data = TokenisedData(train=train, heldout=heldout, sources=accounting, key=key)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    return data


class Collator:
    """Dynamic padding to the longest sequence in the batch; counts real and padded tokens."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, batch: list[dict[str, list[int]]]):
        import torch

        width = max(len(row["input_ids"]) for row in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        self.real_tokens += int(mask.sum())
        self.padded_tokens += mask.numel()
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
