"""Padding waste on the Alpaca mixture at the default settings: random batches vs length-grouped.

    python -m benchmarks.speed.padding [--data alpaca] [--batch-size 4] [--max-length 256]

Runs the real tokenised mixture through the same sampler and collator the trainer uses (one full
epoch, no model) and prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json



def padding_fraction(rows, sampler, batch_size, collator) -> float:
    real = padded = 0
    order = list(sampler)
    for i in range(0, len(order) - batch_size + 1, batch_size):
        batch = collator([rows[j] for j in order[i: i + batch_size]])
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="alpaca")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    import torch
    from torch.utils.data import RandomSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from sft_lab.config import compose
    from sft_lab.data import build_mixture
    from sft_lab.models import load_tokenizer
    from sft_lab.tokens import Collator, tokenise_mixture

    cfg = compose([f"data={args.data}"])
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    mix = build_mixture(cfg.data, cfg.paths.data_dir, cfg.seed)
    rows = tokenise_mixture(mix, cfg.template, tok, args.max_length, cfg.paths.cache_dir).train
    collator = Collator(tok.pad_token_id)
    g = torch.Generator().manual_seed(0)
    results = {
        "random": padding_fraction(rows, RandomSampler(rows, generator=g), args.batch_size, collator),
        "group_by_length": padding_fraction(
            rows, LengthGroupedSampler(args.batch_size, dataset=rows, generator=g), args.batch_size, collator),
    }
    print(f"| sampler (data={args.data}, batch {args.batch_size}, max_length {args.max_length}) | padding fraction |")
    print("|---|---|")
    for name, frac in results.items():
        print(f"| {name} | {frac:.1%} |")
    print(json.dumps({"benchmark": "padding", "data": args.data, "examples": len(rows), "batch_size": args.batch_size,
                      "max_length": args.max_length, **{k: round(v, 4) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
