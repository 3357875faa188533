import pytest
from conftest import compose

from sft_lab.templates import IGNORE, render_segments, tokenise

CONV = [{"role": "user", "content": "Name a primary colour.", "input": "Answer in one word."},
        {"role": "assistant", "content": "Red."}]
MULTI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def show(tok, t):
    """What the loss sees, for a reviewer: [[trained text]] inside the rendered text."""
    out, trained = [], False
    for i, l in zip(t.input_ids, t.labels):
        if (l != IGNORE) != trained:
            out.append("[[" if not trained else "]]")
            trained = not trained
        out.append(tok.decode([i]))
    return "".join(out) + ("]]" if trained else "")


@pytest.mark.parametrize("name", ["alpaca", "chatml", "native", "vicuna", "plain"])
def test_only_answers_and_eos_are_trained(name, tokenizer):
    template = compose([f"template={name}"]).template
    t = tokenise(MULTI, template, tokenizer, 512)
    print(f"\n--- template={name}\n{show(tokenizer, t)}")
    trained = tokenizer.decode([i for i, l in zip(t.input_ids, t.labels) if l != IGNORE])
    assert "Hello!" in trained and "4" in trained
    assert "Hi" not in trained and "2+2" not in trained
    assert trained.count(tokenizer.eos_token) == 2  # every assistant turn ends with a labelled EOS
    assert t.labels[-1] != IGNORE or name == "chatml"  # chatml's trailing newline follows the EOS
    # labels are the ids themselves where trained
    assert all(l == i for i, l in zip(t.input_ids, t.labels) if l != IGNORE)


def test_alpaca_template_renders_the_stanford_prompt(tokenizer):
    template = compose(["template=alpaca"]).template
    text = "".join(s for s, _ in render_segments(CONV, template, tokenizer))
    assert text.startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Instruction:\nName a primary colour.\n\n### Input:\nAnswer in one word.\n\n### Response:\nRed." in text
    no_input = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]
    text = "".join(s for s, _ in render_segments(no_input, template, tokenizer))
    assert text.startswith("Below is an instruction that describes a task. Write")
    assert "### Input" not in text
    assert text.endswith(tokenizer.eos_token)


def test_truncation_is_reported(tokenizer):
    template = compose(["template=alpaca"]).template
    t = tokenise(CONV, template, tokenizer, 10)
    assert t.truncated and len(t.input_ids) == 10


@pytest.mark.parametrize("template, system, shows", [
    ("native", "You answer in one word.", "<|im_start|>system\nYou answer in one word.<|im_end|>"),
    ("chatml", "<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user"),
    ("vicuna", "You are terse. ", "You are terse. USER:"),
])
def test_a_system_prompt_per_template(template, system, shows, tokenizer):
    conv = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]
    t = compose([f"template={template}"]).template
    t.system = system
    text = "".join(s for s, _ in render_segments(conv, t, tokenizer))
    assert shows in text and text.count(system.strip()) == 1
