"""Training throughput: sft-lab's training path vs TRL's SFTTrainer vs a plain transformers Trainer script.

    pip install trl==1.16.0          # the comparison baseline (pip install -e ".[bench]")
    python -m benchmarks.speed.train_throughput [--steps 12] [--rounds 2] [--batch-size 4] [--max-length 256]
    python -m benchmarks.speed.train_throughput --sides sft_lab,trl_defaults --steps 4 --rounds 1   # about 10 minutes

Held equal: SmolLM2-135M-Instruct (fp32), LoRA r8/alpha16 (dropout --lora-dropout) on the same modules, the same Alpaca
examples rendered with the same Alpaca prompt (loss on the answer only), batch, max length, steps,
learning rate. `trl` holds TRL to fp32 without gradient checkpointing, like the other sides;
`trl_defaults` is TRL as a user gets it (its SFTConfig defaults: bf16 autocast and gradient
checkpointing), with only the held-equal settings given. `trl_best` is TRL at its fastest settings:
`padding_free=True`, and on a GPU Liger's kernels (`use_liger_kernel=True`, which needs liger-kernel). Each side runs in its own process (so peak RSS is its own), sides alternate within a
round, and ratios are taken within each round (these machines are noisy). Prints a table and one JSON line.

Real tokens are non-padding tokens; padded tokens include padding. MFU counts 4 x parameters FLOPs per
real token (LoRA: forward plus activation gradients, no weight gradients for frozen weights) against a
measured fp32 2048x2048 matmul peak on the same threads.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT  # noqa: E402
SIDES = ("sft_lab", "plain_trainer", "trl", "trl_defaults", "trl_best")
DEFAULT_SIDES = "sft_lab,plain_trainer,trl"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def matmul_peak_gflops(n: int = 2048, reps: int = 10, gpu: bool = False) -> float:
    """fp32 on the CPU threads; bf16 on the GPU (n=8192)."""
    import torch

    if gpu:
        n, reps = 8192, 50
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    else:
        a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    if gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if gpu:
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def setup(args):
    """The model, tokenizer, and the benchmark's examples as (conversation, prompt, answer)."""
    import torch

    from sft_lab.config import compose
    from sft_lab.data import build_mixture
    from sft_lab.models import load_model, load_tokenizer
    from sft_lab.templates import render_prompt

    torch.manual_seed(0)
    cfg = compose(["data=alpaca", f"data.examples={args.steps * args.batch_size}", *args.model.split()])
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = load_model(cfg.model, tok, cfg.paths.cache_dir, seed=0)
    mix = build_mixture(cfg.data, cfg.paths.data_dir, seed=0)
    examples = [(ex, *render_prompt(ex.conversation, cfg.template, tok)) for ex in mix.train]
    return cfg, tok, model, mix, examples


def lora(model, dropout: float):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS,
                                            task_type="CAUSAL_LM"))


class CountingCollator:
    def __init__(self, inner):
        self.inner, self.real, self.padded = inner, 0, 0

    def __call__(self, batch):
        out = self.inner(batch)
        self.real += int(out["attention_mask"].sum()) if "attention_mask" in out else int(out["input_ids"].numel())
        self.padded += int(out["input_ids"].numel())
        return out


def training_args(args, cls, out_dir, own_precision: bool = False, **extra):
    """own_precision: leave bf16 to the class's own default (TRL as a user gets it)."""
    precision = {} if own_precision else {"bf16": args.gpu}
    return cls(output_dir=out_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
               learning_rate=2e-4, warmup_steps=0, logging_steps=10_000, save_strategy="no", report_to=[],
               use_cpu=not args.gpu, seed=0, disable_tqdm=True, **precision, **extra)


def run_side(side: str, args) -> dict:
    import tempfile

    cfg, tok, model, mix, examples = setup(args)
    out_dir = tempfile.mkdtemp()
    if side == "sft_lab":
        from sft_lab.tokens import tokenise_mixture
        from sft_lab.train import train

        data = tokenise_mixture(mix, cfg.template, tok, args.max_length, None)
        data.heldout = []
        train_cfg = dict(cfg.train, max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                         warmup_steps=0, logging_steps=10_000, save_steps=10_000)
        from omegaconf import OmegaConf

        metrics = train(lora(model, args.lora_dropout), tok, data, OmegaConf.create(train_cfg), 2e-4, 0, Path(out_dir)).metrics
        wall, padded = metrics["wall_s"], metrics["padded_tokens"]
        real = sum(s["tokens"] for s in metrics["trained_on"].values())
    elif side == "plain_trainer":
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        rows = []
        for _, prompt, answer in examples:  # what a user writes: prompt tokens masked, answer (with EOS) learnt
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            a = tok(answer, add_special_tokens=False)["input_ids"]
            ids = (p + a)[: args.max_length]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                         "labels": ([-100] * len(p) + a)[: args.max_length]})
        collator = CountingCollator(DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
        trainer = Trainer(model=lora(model, args.lora_dropout), args=training_args(args, TrainingArguments, out_dir),
                          train_dataset=rows,
                          data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        wall, real, padded = time.perf_counter() - start, collator.real, collator.padded
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        eos = tok.eos_token
        ds = Dataset.from_list([{"prompt": p, "completion": a[: -len(eos)] if a.endswith(eos) else a}
                                for _, p, a in examples])
        # TRL's defaults are bf16 and gradient checkpointing; side `trl` holds it to fp32 (bf16 is slower on
        # this CPU) without checkpointing, as on the other sides.
        own = {} if side == "trl_defaults" else {"gradient_checkpointing": False}
        length = args.max_length
        if side == "trl_best":  # TRL's fastest: no padding (position ids), and Liger's kernels where they run
            own.update(padding_free=True, use_liger_kernel=args.gpu)
            length = None  # TRL enforces no max_length without packing: the examples stay whole (tok/s per real token)
        sft_args = training_args(args, SFTConfig, out_dir, own_precision=side == "trl_defaults",
                                 max_length=length, completion_only_loss=True, packing=False, **own)
        trainer = SFTTrainer(model=lora(model, args.lora_dropout), args=sft_args, train_dataset=ds, processing_class=tok)
        trainer.data_collator = collator = CountingCollator(trainer.data_collator)
        start = time.perf_counter()
        trainer.train()
        wall, real, padded = time.perf_counter() - start, collator.real, collator.padded
    return {"side": side, "wall_s": round(wall, 2), "real_tokens": real, "padded_tokens": padded,
            "real_tok_s": round(real / wall, 1), "padded_tok_s": round(padded / wall, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    from sft_lab.config import LoraConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora-dropout", type=float, default=LoraConfig.dropout, help="every side (sft-lab's default)")
    parser.add_argument("--sides", default=DEFAULT_SIDES, help=f"comma-separated, from {','.join(SIDES)}")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help="CUDA with bf16 on every side (benchmarks/gpu/throughput.py)")
    parser.add_argument("--model", default="", help="Hydra overrides for the model, e.g. 'model=tiny model.arch.hidden_size=576'")
    args = parser.parse_args()
    if args.side:
        print("RESULT " + json.dumps(run_side(args.side, args)))
        return
    import torch

    peak = matmul_peak_gflops(gpu=args.gpu)
    sides = args.sides.split(",")
    if set(sides) - set(SIDES):
        parser.error(f"--sides: unknown {sorted(set(sides) - set(SIDES))}; choose from {', '.join(SIDES)}")
    rounds = []
    for r in range(args.rounds):
        results = {}
        for side in sides if r % 2 == 0 else sides[::-1]:  # alternate the order between rounds
            out = subprocess.run([sys.executable, "-m", __spec__.name, "--side", side, "--steps", str(args.steps), "--batch-size",
                                  str(args.batch_size), "--max-length", str(args.max_length), "--model", args.model,
                                  "--lora-dropout", str(args.lora_dropout),
                                  *(["--gpu"] if args.gpu else [])],
                                 capture_output=True, text=True, cwd=ROOT)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if not line:
                sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
            results[side] = json.loads(line[0][7:])
        rounds.append(results)
    summary = {}
    for side in sides:
        runs = [r[side] for r in rounds]
        tok_s = round(statistics.median(x["real_tok_s"] for x in runs), 1)
        summary[side] = {
            "real_tok_s": tok_s, "padded_tok_s": round(statistics.median(x["padded_tok_s"] for x in runs), 1),
            "padding_fraction": round(1 - runs[0]["real_tokens"] / runs[0]["padded_tokens"], 3),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
            "mfu": round(4 * runs[0]["params"] * tok_s / (peak * 1e9), 3),
        }
    ratios = {f"sft_lab_vs_{s}": round(statistics.median(r["sft_lab"]["real_tok_s"] / r[s]["real_tok_s"] for r in rounds), 2)
              for s in sides if s != "sft_lab" and "sft_lab" in sides}
    device = torch.cuda.get_device_name() if args.gpu else "CPU"
    print(f"{device}: SmolLM2-135M {args.model or ''} LoRA r8, batch {args.batch_size}, max_length {args.max_length}, {args.steps} steps, "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}, matmul peak {peak:.0f} GFLOP/s")
    print("| side | real tok/s | padded tok/s | padding | peak RSS MB | MFU |")
    print("|---|---|---|---|---|---|")
    for side, s in summary.items():
        print(f"| {side} | {s['real_tok_s']} | {s['padded_tok_s']} | {s['padding_fraction']:.1%} | {s['peak_rss_mb']} | {s['mfu']:.1%} |")
    print(json.dumps({"benchmark": "gpu_throughput" if args.gpu else "train_throughput", "device": device,
                      "model": args.model or "smollm2_135m", "matmul_peak_gflops": round(peak), "steps": args.steps,
                      "batch_size": args.batch_size, "max_length": args.max_length, "lora_dropout": args.lora_dropout,
                      "sides": summary, **ratios}))


if __name__ == "__main__":
    main()
