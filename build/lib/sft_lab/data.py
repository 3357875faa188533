"""Instruction data: files or Hub sets -> one conversation form -> a seeded mixture + a held-out split.

A conversation is a list of messages {"role": system|user|assistant, "content": str}; a user
message from an Alpaca/Dolly record may also carry "input" (the record's input/context), so that
templates that have an input section (Stanford Alpaca's) can render it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sft_lab import toy
from sft_lab.errors import UserError

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]
REQUIRED_FIELDS = {
    "alpaca": ("instruction", "output"),
    "dolly": ("instruction", "response"),
    "sharegpt": ("conversations",),
    "messages": ("messages",),
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


class DataError(UserError):
    """Bad data; the message names the file and line (or record) or the config key."""


@dataclass
class Example:
    source: str
    conversation: Conversation
    where: str  # file:line or file#record, for error messages


@dataclass
class Mixture:
    train: list[Example]
    heldout: list[Example]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-source accounting
    fingerprint: str = ""


# ---------------------------------------------------------------- reading files


def read_records(path: Path) -> Iterable[tuple[str, dict]]:
    """Yield (location, record) from a .json list or a .jsonl file; bad JSON names file and line."""
    if path.is_dir():
        raise DataError(f"data file {path} is a folder; give a .json or .jsonl file inside it")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
                        "re-encode the file as UTF-8") from None
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield f"{path}:{lineno}", record
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path} record #{i}: expected a JSON object, got {type(record).__name__}")
        yield f"{path} record #{i}", record


def detect_format(record: dict, where: str) -> str:
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "messages"
    if "response" in record or "context" in record:
        return "dolly"
    if "instruction" in record and "output" in record:
        return "alpaca"
    raise DataError(f"{where}: cannot tell the format from fields {sorted(record)}; set data.sources.<name>.format")


def to_conversation(record: dict, fmt: str, where: str) -> Conversation:
    missing = [f for f in REQUIRED_FIELDS[fmt] if f not in record]
    if missing:
        raise DataError(f"{where}: record is missing required field(s) {missing} for format {fmt!r}")
    if fmt in ("alpaca", "dolly"):
        extra, answer = ("input", "output") if fmt == "alpaca" else ("context", "response")
        conv: Conversation = []
        for turn in record.get("history") or []:  # LIMA-style earlier turns: [user, assistant] pairs
            if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
                raise DataError(f"{where}: each history turn must be a [user, assistant] pair")
            conv += [{"role": "user", "content": str(turn[0])}, {"role": "assistant", "content": str(turn[1])}]
        user = {"role": "user", "content": str(record["instruction"])}
        if record.get(extra):
            user["input"] = str(record[extra])
        return conv + [user, {"role": "assistant", "content": str(record[answer])}]
    if fmt == "sharegpt":
        conv = []
        turns = record["conversations"]
        if turns and all(isinstance(t, str) for t in turns):  # plain alternating turns (GAIR/lima on the Hub)
            return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
        for i, turn in enumerate(turns):
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None or "value" not in turn:
                raise DataError(f"{where}: conversations[{i}] needs 'from' (human/gpt/system) and 'value'")
            conv.append({"role": role, "content": str(turn["value"])})
        return conv
    conv = []
    for i, m in enumerate(record["messages"]):
        if m.get("role") not in ("system", "user", "assistant") or "content" not in m:
            raise DataError(f"{where}: messages[{i}] needs role system/user/assistant and content")
        conv.append({"role": m["role"], "content": str(m["content"])})
    return conv


def load_source(name: str, src, data_dir: str) -> tuple[list[Example], dict[str, Any]]:
    """Read one source (file, else Hub) into conversations; returns examples and provenance."""
    records: Iterable[tuple[str, dict]]
    path = Path(src.path) if src.path and Path(src.path).is_absolute() else Path(data_dir) / (src.path or "")
    if src.path and path.is_dir():
        raise DataError(f"data.sources.{name}.path: {path} is a folder; give a .json or .jsonl file inside it")
    if src.path and src.path.startswith(toy.SCHEME):
        task = src.path[len(toy.SCHEME):]
        try:
            rows = toy.records(task)
        except toy.ToyError as e:
            raise DataError(f"data.sources.{name}.path: {e}") from None
        records = ((f"{src.path}#{i}", r) for i, r in enumerate(rows))
        provenance = {"generator": src.path, "sha256": hashlib.sha256(json.dumps(rows).encode()).hexdigest()}
    elif src.path and path.is_file():
        records, provenance = read_records(path), {"file": str(path), "sha256": _sha256(path)}
    elif src.hub:
        records, provenance = _hub_records(name, src, path), {"hub": src.hub}
    else:
        raise DataError(f"data.sources.{name}: data file {path} does not exist (set paths.data_dir or SFT_LAB_DATA_DIR)")
    fmt = src.format
    examples, empty = [], 0
    for where, record in records:
        if fmt == "auto":
            fmt = detect_format(record, where)
        conv = to_conversation(record, fmt, where)
        if not conv or conv[-1]["role"] != "assistant" or not conv[-1]["content"].strip():
            empty += 1  # nothing to learn from an empty answer
            continue
        examples.append(Example(name, conv, where))
    provenance.update(format=fmt, records=len(examples) + empty, empty_dropped=empty)
    return examples, provenance


def _hub_records(name: str, src, path: Path) -> Iterable[tuple[str, dict]]:
    try:
        from datasets import load_dataset

        ds = load_dataset(src.hub, split="train")
    except Exception as e:
        raise DataError(
            f"data.sources.{name}: neither the file {path} nor the Hub dataset {src.hub!r} could be read "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Offline, point paths.data_dir "
            "(or SFT_LAB_DATA_DIR) at a folder holding the file."
        ) from None
    for i, record in enumerate(ds):
        yield f"{src.hub}#{i}", dict(record)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- split and mix


def prompt_key(conv: Conversation) -> str:
    """Everything but the final answer: the thing that must never sit in train and held-out both."""
    return json.dumps(conv[:-1], sort_keys=True, ensure_ascii=False)


def is_heldout(conv: Conversation, fraction: float) -> bool:
    digest = hashlib.sha256(prompt_key(conv).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def dedupe(examples: list[Example]) -> tuple[list[Example], int]:
    seen, kept = set(), []
    for ex in examples:
        key = json.dumps(ex.conversation, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept, len(examples) - len(kept)


def source_counts(sources: dict, size: int | None, pools: dict[str, list[Example]]) -> dict[str, int]:
    """How many training examples each source contributes, from exact counts or weights.

    Weights are shares of the mixture's examples (normalised, so 1:1 and 0.5:0.5 are the same).
    Without a size, the mixture is the largest one that needs no upsampling of any source.
    """
    if any(s.examples is not None for s in sources.values()):
        return {n: int(sources[n].examples) for n in pools}
    weights = {n: float(sources[n].weight) if sources[n].weight is not None else 1.0 for n in pools}
    shares = {n: w / sum(weights.values()) for n, w in weights.items()}
    size = size or int(min(len(pools[n]) / shares[n] for n in pools))
    counts = {n: int(shares[n] * size) for n in pools}
    # Largest-remainder rounding: the counts add up to the size exactly.
    by_remainder = sorted(pools, key=lambda n: shares[n] * size - counts[n], reverse=True)
    for n in by_remainder[: size - sum(counts.values())]:
        counts[n] += 1
    return counts


def draw(pool: list[Example], n: int, rng: random.Random) -> list[Example]:
    """n examples from pool: a seeded sample, or whole passes plus a sample when n > len(pool)."""
    if not pool:
        return []
    full, rest = divmod(n, len(pool))
    return pool * full + rng.sample(pool, rest)


def build_mixture(data_cfg, data_dir: str, seed: int) -> Mixture:
    from sft_lab.config import resolve_sources

    rng = random.Random(seed)
    sources = resolve_sources(data_cfg)
    pools, heldouts, accounting, provenance = {}, {}, {}, {}
    for name, src in sources.items():
        examples, prov = load_source(name, src, data_dir)
        examples, dupes = dedupe(examples)
        held = [ex for ex in examples if is_heldout(ex.conversation, data_cfg.heldout_fraction)]
        held_keys = {prompt_key(ex.conversation) for ex in held}
        pools[name] = [ex for ex in examples if prompt_key(ex.conversation) not in held_keys]
        heldouts[name] = held
        provenance[name] = prov
        accounting[name] = {"available": len(pools[name]), "duplicates_removed": dupes, "heldout": len(held), **prov}
    counts = source_counts(sources, data_cfg.examples, pools)
    train = []
    for name, n in counts.items():
        drawn = draw(pools[name], n, rng)
        accounting[name].update(drawn=len(drawn), upsampled=n > len(pools[name]),
                                upsample_factor=round(n / len(pools[name]), 3) if pools[name] else None)
        train += drawn
    if not train:
        raise DataError(f"data={data_cfg.name!r}: the mixture came out empty (per-source counts {counts}, "
                        f"examples available {{{', '.join(f'{n}: {len(p)}' for n, p in pools.items())}}})")
    rng.shuffle(train)
    heldout = first_heldout([ex for name in heldouts for ex in heldouts[name]], data_cfg.heldout_max)
    for name in accounting:
        accounting[name]["heldout_used"] = sum(ex.source == name for ex in heldout)
    fp = fingerprint_data(data_cfg, sources, provenance, seed)
    return Mixture(train=train, heldout=heldout, sources=accounting, fingerprint=fp)


def first_heldout(held: list[Example], limit: int) -> list[Example]:
    """A fixed draw of `limit` held-out examples: not the run seed, so every seed sees the same test set."""
    held = list(held)
    random.Random(0).shuffle(held)
    return held[:limit]


def heldout_split(name: str, src, data_cfg, data_dir: str, keep=lambda ex: True) -> list[Example]:
    """One source's held-out examples (task heldout_<name>), whatever the run trains on; `keep` filters
    them before the draw (e.g. those that fit the model's window).

    The split is by a hash of the prompt, with the run's data.heldout_fraction, so these prompts are in
    no source's training pool: a prompt two sources share (Alpaca and Alpaca-GPT4) is held out of both.
    """
    examples, _ = dedupe(load_source(name, src, data_dir)[0])
    return first_heldout([ex for ex in examples if is_heldout(ex.conversation, data_cfg.heldout_fraction) and keep(ex)],
                         data_cfg.heldout_max)


def fingerprint_data(data_cfg, sources: dict, provenance: dict, seed: int) -> str:
    """Sources (by content hash, not by where the files sit), mixture and seed."""
    from omegaconf import OmegaConf

    srcs = {n: {k: v for k, v in OmegaConf.to_container(s, resolve=True).items() if k != "path"}
            for n, s in sources.items()}
    mixture = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items()
               if k not in ("sources", "path", "name")}
    files = {n: p.get("sha256") or p.get("hub") for n, p in provenance.items()}
    blob = json.dumps({"sources": srcs, "mixture": mixture, "files": files, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
