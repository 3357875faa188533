"""Where one LoRA training step's time goes (or, with --eval, an evaluation's): matrix multiplies
against everything else.

    python -m benchmarks.profile.profile_step [--batch-size 4] [--length 160] [--lora-dropout 0.0]
    python -m benchmarks.profile.profile_step --eval [--limit 40]     # sft-lab's evaluation, ARC-Easy + PIQA

SmolLM2-135M-Instruct, LoRA r8 on the attention and MLP projections (as in train_throughput.py), one
forward and backward pass on a batch of random tokens with the first half of each row masked from the
loss, as sft-lab trains on CPU (fused ops, the rows laid end to end, the LM head on the answers only),
under torch.profiler. The matmul share bounds any harness speed-up: with every other op gone, a
step would take (matmul share) of its time. `--eval` profiles sft-lab's evaluation of the same
model (ARC-Easy and PIQA at --limit items each, after a warm-up on other items) and also reports the
share of wall time spent outside torch ops (lm-eval's and sft-lab's Python). Prints a table and one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=160)
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="sft-lab's default is 0.0")
    parser.add_argument("--eval", action="store_true", help="profile the evaluation instead of a training step")
    parser.add_argument("--limit", type=int, default=40, help="--eval: items per task")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import profile

    from sft_lab.config import compose
    from sft_lab.cpu.fused import fused_ops
    from sft_lab.cpu.passes import PASS_TOKENS, loss_in_passes
    from sft_lab.models import load_model, load_tokenizer

    cfg = compose()
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = get_peft_model(load_model(cfg.model, tok, cfg.paths.cache_dir, seed=0),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=args.lora_dropout, target_modules=TARGETS,
                                      task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    if args.eval:
        step, what = eval_step(model, tok, args.limit), f"evaluation of ARC-Easy + PIQA, {args.limit} items each"
    else:
        model.train()
        ids = torch.randint(0, len(tok), (args.batch_size, args.length))
        labels = ids.clone()
        labels[:, : args.length // 2] = -100
        # the production loss (sft_lab.cpu.passes.loss_in_passes): the batch in passes of PASS_TOKENS, each pass's
        # rows laid end to end, the LM head on the answers only
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        scale = 1 / int((labels[:, 1:] != -100).sum())

        def step():
            loss, _ = loss_in_passes(model, model, dict(batch), labels, scale, PASS_TOKENS, True, torch.autograd.backward)
            loss.backward()

        what = f"one step, batch {args.batch_size} x {args.length} tokens in passes of {PASS_TOKENS}"
    # As sft-lab trains on CPU (fused ops); it evaluates unfused.
    with fused_ops(model, enabled=not args.eval):
        step()  # warm-up
        start = time.perf_counter()
        with profile() as prof:
            step()
        wall = time.perf_counter() - start
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    share = {e.key: e.self_cpu_time_total / total for e in ops[:8]}
    outside = max(0.0, 1 - total / 1e6 / wall)  # wall time in no torch op: Python, data, lm-eval
    print(f"SmolLM2-135M LoRA r8 (dropout {args.lora_dropout}), {what}, torch threads {torch.get_num_threads()}, "
          f"{wall:.2f} s under the profiler, {outside:.1%} of it outside torch ops")
    print("| op | share of time in torch ops |")
    print("|---|---|")
    for name, s in share.items():
        print(f"| {name} | {s:.1%} |")
    mm = sum(e.self_cpu_time_total for e in ops if e.key in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")) / total
    bound = 1 / (mm * (1 - outside))
    print(f"matmuls {mm * (1 - outside):.1%} of the wall time: removing every other op and all Python would make it "
          f"at most {bound:.2f}x faster")
    print(json.dumps({"benchmark": "profile_eval" if args.eval else "profile_step", "batch_size": args.batch_size,
                      "length": args.length, "limit": args.limit if args.eval else None, "lora_dropout": args.lora_dropout,
                      "matmul_share": round(mm, 3), "outside_torch_ops": round(outside, 3),
                      "max_speedup_bound": round(bound, 2), "top_ops": {k: round(v, 3) for k, v in share.items()}}))


def eval_step(model, tok, limit: int):
    """sft-lab's evaluation on ARC-Easy and PIQA; the first call (the warm-up) scores 8 items each."""

    import tempfile

    from sft_lab.config import compose
    from sft_lab.evaluate import evaluate
    from sft_lab.models import merged_for_eval
    from sft_lab.tasks import write_tasks

    model = merged_for_eval(model).eval()  # as the pipeline evaluates
    work = Path(tempfile.mkdtemp())
    cfg = compose()
    write_tasks(work / "tasks", cfg.paths.data_dir, [])
    calls = iter([compose(["eval.tasks=[arc_easy,piqa]", "eval.limit=8", "eval.log_samples=false"]).eval,
                  compose(["eval.tasks=[arc_easy,piqa]", f"eval.limit={limit}", "eval.log_samples=false"]).eval])
    return lambda: evaluate(model, tok, next(calls), work / "tasks", work)


if __name__ == "__main__":
    main()
