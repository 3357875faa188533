"""Conversation -> token ids + labels: the template renders, the mask says what the loss sees.

Rendering yields segments (text, trained?). Each segment is tokenised on its own and the ids are
concatenated, so the mask is exact: the loss sees every assistant answer and its end-of-turn
marker (EOS included), and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sft_lab.errors import UserError

IGNORE = -100
CHARS_PER_TOKEN_MAX = 32  # no token of a real tokenizer spans more characters than this


class TemplateError(UserError):
    pass


def _user_text(msg: dict) -> str:
    return msg["content"] + (f"\n\n{msg['input']}" if msg.get("input") else "")


def render_segments(conv: list[dict], template, tokenizer) -> list[tuple[str, bool]]:
    """[(text, trained)] for a whole conversation."""
    if template.native:
        return _native_segments(conv, tokenizer, template.system)
    eos = tokenizer.eos_token or ""

    def fill(s: str, content: str = "", extra: str = "") -> str:
        return s.replace("{eos}", eos).replace("{input}", extra).replace("{content}", content)

    has_input = any(m.get("input") for m in conv)
    segments: list[tuple[str, bool]] = []
    messages = conv
    if messages and messages[0]["role"] == "system":
        segments.append((messages[0]["content"] + template.separator, False))
        messages = messages[1:]
    elif template.system:
        system = template.system_with_input if has_input and template.system_with_input else template.system
        segments.append((fill(system), False))
    for i, msg in enumerate(messages):
        sep = template.separator if i > 0 and msg["role"] == "user" else ""
        if msg["role"] == "user" and msg.get("input") and template.user_with_input:
            segments.append((sep + fill(template.user_with_input, msg["content"], msg["input"]), False))
        elif msg["role"] == "user":
            segments.append((sep + fill(template.user, _user_text(msg)), False))
        elif msg["role"] == "assistant":
            segments.append((fill(template.assistant_prefix), False))
            segments.append((msg["content"] + fill(template.assistant_suffix), True))
        else:
            raise TemplateError(f"template {template.name!r}: a {msg['role']!r} message after the first turn")
    return _whitespace_to_answers([(t, trained) for t, trained in segments if t])


def _whitespace_to_answers(segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Move a prompt's trailing whitespace onto the answer after it, as lm-eval does when it scores.

    "...stone\n\n" tokenised alone ends in one "\n\n" token, but lm-eval encodes "\n\napple" as
    "\n", "\n", "apple": without this, held-out log-likelihoods score a tokenisation never trained on.
    """
    out = list(segments)
    for i in range(1, len(out)):
        (prev, prev_trained), (text, trained) = out[i - 1], out[i]
        ws = prev[len(prev.rstrip()):]
        if trained and not prev_trained and ws and prev.strip():
            out[i - 1], out[i] = (prev[: len(prev) - len(ws)], False), (ws + text, True)
    return out


def _native_segments(conv: list[dict], tokenizer, system: str = "") -> list[tuple[str, bool]]:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("template=native: this tokenizer has no chat template; pick alpaca, chatml, vicuna or plain")
    msgs = [{"role": m["role"], "content": _user_text(m) if m["role"] == "user" else m["content"]} for m in conv]
    if system and not (msgs and msgs[0]["role"] == "system"):  # template.system: the run's system prompt
        msgs = [{"role": "system", "content": system}, *msgs]
    segments, done = [], ""
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise TemplateError("template=native: the tokenizer's chat template does not render turns as prefixes")
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return _whitespace_to_answers([(t, trained) for t, trained in segments if t])


def render_prompt(conv: list[dict], template, tokenizer) -> tuple[str, str]:
    """(everything before the last answer, the last answer as trained) for log-likelihood tasks."""
    segments = render_segments(conv, template, tokenizer)
    *before, (answer, _) = segments
    return "".join(t for t, _ in before), answer


def generation_prompt(instruction: str, template, tokenizer) -> str:
    """The text a model trained with this template sees before it answers one instruction."""
    return render_prompt([{"role": "user", "content": instruction}, {"role": "assistant", "content": ""}],
                         template, tokenizer)[0]


@dataclass
class Stops:
    until: list[str]  # stop strings for generation: the end-of-turn marker, when the template has one
    note: str  # where an answer ends, in words (for the log and the record)


def generation_stops(template, tokenizer) -> Stops:
    """Where a generated answer ends: the template's end-of-turn marker, the text each trained answer ends
    with, or else at EOS alone (a template whose answers end in nothing but whitespace)."""
    probe = "\x00answer\x00"
    trained = "".join(t for t, is_trained in render_segments(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": probe}], template, tokenizer) if is_trained)
    marker = trained.split(probe, 1)[1].strip()
    eos = tokenizer.eos_token
    if not marker:
        return Stops([], f"template {template.name!r} has no end-of-turn marker (its answers end in whitespace): "
                         f"generation stops at EOS ({eos!r}) or at max_gen_toks")
    return Stops([marker], f"at the end-of-turn marker {marker!r}" + (f" or EOS ({eos!r})" if marker != eos else ""))


@dataclass
class Tokenised:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def tokenise(conv: list[dict], template, tokenizer, max_length: int) -> Tokenised:
    ids: list[int] = []
    labels: list[int] = []
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False):
        ids.append(bos)
        labels.append(IGNORE)
    chars = max_length * CHARS_PER_TOKEN_MAX  # past this, the tokens would be cut anyway: never tokenise them
    cut = False
    for text, trained in render_segments(conv, template, tokenizer):
        if len(text) > chars:
            text, cut = text[:chars], True
        chars -= len(text)
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if trained else [IGNORE] * len(seg)
        if chars <= 0:
            cut = True
            break
    truncated = cut or len(ids) > max_length
    return Tokenised(ids[:max_length], labels[:max_length], truncated)


def fingerprint_template(template, tokenizer) -> str:
    from omegaconf import OmegaConf

    blob = json.dumps(
        {"template": OmegaConf.to_container(template, resolve=True), "tokenizer": tokenizer.name_or_path
         if not hasattr(tokenizer, "backend_tokenizer") else tokenizer.backend_tokenizer.to_str(),
         "chat_template": getattr(tokenizer, "chat_template", None) if template.native else None,
         "rendering": 2},  # 2: prompt whitespace moved onto the answer
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
