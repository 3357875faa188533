"""Fused training ops (sft_lab.cpu.fused) against peft's and transformers' own modules, side by side.

    python -m benchmarks.speed.fused_ops [--rounds 9] [--batch-size 2] [--length 192]

SmolLM2-135M-Instruct with LoRA r8 on all seven projections (B drawn non-zero, as after training), one
forward and backward pass of the decoder on random tokens (loss on the second half of each row), in
one process. The two sides alternate within each round; the ratio is the median of the per-round
ratios. Also checks that the LoRA gradients agree. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--length", type=int, default=192)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from sft_lab.config import compose
    from sft_lab.cpu.fused import fused_ops
    from sft_lab.models import load_model, load_tokenizer

    cfg = compose()
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = get_peft_model(load_model(cfg.model, tok, cfg.paths.cache_dir, seed=0),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    model.train()
    decoder = model.get_base_model().model
    ids = torch.randint(0, len(tok), (args.batch_size, args.length))

    def step(fused: bool):
        model.zero_grad(set_to_none=True)
        with fused_ops(model, enabled=fused):
            start = time.perf_counter()
            decoder(input_ids=ids).last_hidden_state[:, args.length // 2:].pow(2).mean().backward()
            wall = time.perf_counter() - start
        return wall, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    _, plain = step(False)
    _, fused = step(True)
    worst = max(((plain[n] - fused[n]).abs().max() / plain[n].abs().max()).item() for n in plain)
    walls = {"peft": [], "fused": []}
    for _ in range(args.rounds):
        for side in walls:
            walls[side].append(step(side == "fused")[0])
    ratios = [a / b for a, b in zip(walls["peft"], walls["fused"])]
    print(f"SmolLM2-135M LoRA r8, forward + backward of {args.batch_size} x {args.length} tokens, "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}")
    print("| side | median s | tokens/s |")
    print("|---|---|---|")
    for side, w in walls.items():
        print(f"| {side} | {statistics.median(w):.3f} | {args.batch_size * args.length / statistics.median(w):.1f} |")
    print(f"fused / peft: {statistics.median(ratios):.2f}x; largest LoRA gradient difference {worst:.1e} (relative)")
    print(json.dumps({"benchmark": "fused_ops", "batch_size": args.batch_size, "length": args.length,
                      "rounds": args.rounds, "median_s": {k: round(statistics.median(v), 3) for k, v in walls.items()},
                      "speedup": round(statistics.median(ratios), 3), "max_rel_grad_diff": float(f"{worst:.2e}")}))
    if worst > 1e-3:
        sys.exit("fused and peft gradients differ")


if __name__ == "__main__":
    main()
