"""Training step time: the loss on label positions only (sft-lab) vs the model's own full-logits loss.

    python -m benchmarks.speed.label_positions [--model smollm2_135m] [--steps 6] [--rounds 3] [--batch-size 4]

SmolLM2-135M (fp32, CPU), LoRA r8 on all projections, Alpaca rendered with the Alpaca template (loss on
answers only), the same batches for both sides. Each round times a forward+backward step of both
sides, alternating, and the ratio is taken within the round. Also checks the two losses and LoRA
gradients agree. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time



def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()
    import torch

    from sft_lab.config import compose
    from sft_lab.data import build_mixture
    from sft_lab.models import add_lora, load_model, load_tokenizer
    from sft_lab.templates import IGNORE
    from sft_lab.tokens import Collator, tokenise_mixture

    cfg = compose([f"model={args.model}", "data.examples=512"])
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    data = tokenise_mixture(build_mixture(cfg.data, cfg.paths.data_dir, 0), cfg.template, tok, args.max_length,
                            cfg.paths.cache_dir)
    model = add_lora(load_model(cfg.model, tok, cfg.paths.cache_dir, 0), cfg.lora).train()
    collate = Collator(tok.pad_token_id)
    batches = [collate(data.train[i:i + args.batch_size]) for i in range(0, args.batch_size * args.steps, args.batch_size)]
    head = model.get_output_embeddings()

    def full(b):
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss

    def label_only(b):
        hidden = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True,
                       logits_to_keep=1).hidden_states[-1]
        target = b["labels"][:, 1:]
        keep = target != IGNORE
        return torch.nn.functional.cross_entropy(head(hidden[:, :-1][keep]).float(), target[keep])

    def grads(fn, b):
        torch.manual_seed(0)  # the same LoRA dropout masks for both sides
        model.zero_grad()
        loss = fn(b)
        loss.backward()
        return loss.item(), torch.cat([q.grad.flatten() for q in model.parameters() if q.requires_grad])

    (la, ga), (lb, gb) = grads(full, batches[0]), grads(label_only, batches[0])
    agree = {"loss_diff": abs(la - lb), "grad_max_diff": float((ga - gb).abs().max()),
             "grad_scale": float(ga.abs().max())}

    def timed(fn) -> float:
        start = time.perf_counter()
        for b in batches:
            model.zero_grad()
            fn(b).backward()
        return time.perf_counter() - start

    rounds = []
    for r in range(args.rounds):
        order = (full, label_only) if r % 2 == 0 else (label_only, full)
        t = {fn.__name__: timed(fn) for fn in order}
        rounds.append({**t, "speedup": t["full"] / t["label_only"]})
    label_share = sum(int((b["labels"] != IGNORE).sum()) for b in batches) / sum(int(b["attention_mask"].sum()) for b in batches)
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "steps": args.steps,
                      "label_token_share": round(label_share, 3), "rounds": rounds,
                      "speedup_median": round(statistics.median(r["speedup"] for r in rounds), 3), **agree}))


if __name__ == "__main__":
    main()
