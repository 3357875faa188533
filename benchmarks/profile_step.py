"""Where one LoRA training step's time goes: matrix multiplies against everything else.

    python benchmarks/profile_step.py [--batch-size 4] [--length 160] [--lora-dropout 0.05]

SmolLM2-135M-Instruct, LoRA r8 on the attention and MLP projections (as in train_throughput.py), one
forward and backward pass on a batch of random tokens with the first half of each row masked from the
loss, under torch.profiler. The matmul share bounds any harness speed-up: with every other op gone, a
step would take (matmul share) of its time. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=160)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import profile

    from sft_lab.config import compose
    from sft_lab.models import load_model, load_tokenizer

    cfg = compose()
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = get_peft_model(load_model(cfg.model, tok, cfg.paths.cache_dir, seed=0),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=args.lora_dropout, target_modules=TARGETS,
                                      task_type="CAUSAL_LM"))
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(0, len(tok), (args.batch_size, args.length))
    labels = ids.clone()
    labels[:, : args.length // 2] = -100

    def step():
        model(input_ids=ids, labels=labels).loss.backward()

    step()  # warm-up
    start = time.perf_counter()
    with profile() as prof:
        step()
    wall = time.perf_counter() - start
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    share = {e.key: e.self_cpu_time_total / total for e in ops[:8]}
    print(f"SmolLM2-135M LoRA r8 (dropout {args.lora_dropout}), batch {args.batch_size} x {args.length} tokens, "
          f"torch threads {torch.get_num_threads()}, one step {wall:.2f} s under the profiler")
    print("| op | share of step time |")
    print("|---|---|")
    for name, s in share.items():
        print(f"| {name} | {s:.1%} |")
    mm = sum(e.self_cpu_time_total for e in ops if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / total
    print(f"matmuls {mm:.1%} of the step: a harness that removed every other op would be at most {1 / mm:.2f}x faster")
    print(json.dumps({"benchmark": "profile_step", "batch_size": args.batch_size, "length": args.length,
                      "lora_dropout": args.lora_dropout, "matmul_share": round(mm, 3),
                      "max_speedup_bound": round(1 / mm, 2), "top_ops": {k: round(v, 3) for k, v in share.items()}}))


if __name__ == "__main__":
    main()
