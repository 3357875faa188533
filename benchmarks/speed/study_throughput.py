"""A whole ablation grid end to end: sft-lab's one command vs the by-hand workflow (TRL + lm-eval CLI).

    pip install trl==1.16.0          # the by-hand side's trainer (pip install -e ".[bench]")
    python -m benchmarks.speed.study_throughput [--steps 30] [--limit 100] [--rounds 1] [--by-hand-first]

The grid: data=alpaca,dolly x lr=1e-4,2e-4, SmolLM2-135M-Instruct, LoRA r8, `--steps` steps at batch 4
and max length 256, then ARC-Easy and PIQA at `--limit` items each, fp32 on CPU.
- sft_lab: `python -m sft_lab.run -m data=alpaca,dolly lr=1e-4,2e-4 ...` (one process for the grid).
- by_hand: per config, a training script with TRL's SFTTrainer on the same examples (fp32, no gradient
  checkpointing, as in benchmarks/speed/train_throughput.py) that saves the adapter, then the `lm_eval` CLI
  on the saved base + adapter with the same task YAMLs and items.
Sides alternate between rounds. Each side's wall time and peak RSS (its whole process tree, sampled)
are measured; the accuracies of the two sides must agree within sampling noise. Prints a table and
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT  # noqa: E402
from benchmarks.common import timed  # noqa: E402
DATA = ("alpaca", "dolly")
LRS = ("1e-4", "2e-4")
TASKS = ("arc_easy", "piqa")


def sft_lab_side(args, work: Path) -> tuple[float, int, dict]:
    runs = work / "sft_lab_runs"
    cmd = [sys.executable, "-m", "sft_lab.run", "-m", f"data={','.join(DATA)}", f"lr={','.join(LRS)}", "lora=r8",
           f"train.max_steps={args.steps}", f"eval.tasks=[{','.join(TASKS)}]", f"eval.limit={args.limit}",
           "tracking=none", f"paths.runs_dir={runs}"]
    wall, peak = timed(cmd, work, ROOT)
    scores = {}
    for path in runs.glob("*/record.json"):
        r = json.loads(path.read_text())
        key = f"{r['config']['data']['name']},{r['config']['lr']:g}"
        scores[key] = {t: r["eval"][t]["acc"]["value"] for t in TASKS}
    return wall, peak, scores


def by_hand_side(args, work: Path) -> tuple[float, int, dict]:
    from sft_lab.config import compose
    from sft_lab.models import local_path
    from sft_lab.tasks import write_tasks

    cfg = compose([])
    base = local_path(cfg.model.name_or_path, cfg.paths.cache_dir)  # the HF folder a user would have
    tasks = work / "tasks"
    write_tasks(tasks, cfg.paths.data_dir, [])
    wall, peak, scores = 0.0, 0, {}
    for data in DATA:
        for lr in LRS:
            out = work / f"by_hand_{data}_{lr}"
            w1, p1 = timed([sys.executable, "-m", __spec__.name, "--train-by-hand", data, lr, str(out), "--steps", str(args.steps)],
                           work, ROOT)
            w2, p2 = timed(["lm_eval", "--model", "hf", "--model_args",
                            f"pretrained={base},peft={out / 'adapter'},dtype=float32", "--tasks", ",".join(TASKS),
                            "--include_path", str(tasks), "--limit", str(args.limit), "--batch_size", "16",
                            "--device", "cpu", "--output_path", str(out / "lm_eval")], work, ROOT)
            wall, peak = wall + w1 + w2, max(peak, p1, p2)
            [result] = (out / "lm_eval").rglob("results_*.json")
            res = json.loads(result.read_text())["results"]
            scores[f"{data},{float(lr):g}"] = {t: res[t]["acc,none"] for t in TASKS}
    return wall, peak, scores


def train_by_hand(data: str, lr: str, out: Path, steps: int) -> None:
    """What a user writes: the same examples, TRL's SFTTrainer on prompt/completion pairs, save the adapter."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from sft_lab.config import compose
    from sft_lab.data import build_mixture
    from sft_lab.models import load_model, load_tokenizer
    from sft_lab.templates import render_prompt

    cfg = compose([f"data={data}", f"lr={lr}"])
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    torch.manual_seed(0)
    model = load_model(cfg.model, tok, cfg.paths.cache_dir, seed=0)
    mix = build_mixture(cfg.data, cfg.paths.data_dir, seed=0)
    eos = tok.eos_token
    rows = []
    for ex in mix.train:
        prompt, answer = render_prompt(ex.conversation, cfg.template, tok)
        rows.append({"prompt": prompt, "completion": answer[: -len(eos)] if answer.endswith(eos) else answer})
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    sft_args = SFTConfig(output_dir=str(out / "checkpoints"), max_steps=steps, per_device_train_batch_size=cfg.train.batch_size,
                         learning_rate=float(lr), warmup_steps=cfg.train.warmup_steps, lr_scheduler_type=cfg.train.schedule,
                         max_length=cfg.train.max_length, completion_only_loss=True, packing=False,
                         gradient_checkpointing=False, bf16=False, use_cpu=True, save_strategy="no", report_to=[],
                         seed=0, logging_steps=10)
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=lora)
    trainer.train()
    trainer.save_model(str(out / "adapter"))


def agree(a: float, b: float, n: int) -> bool:
    """Two accuracies on the same n items from different trained models: within 3 SE of their difference."""
    p = (a + b) / 2
    return abs(a - b) <= 3 * math.sqrt(max(2 * p * (1 - p) / n, 1e-9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--by-hand-first", action="store_true", help="round 0 runs by_hand first (sides still alternate)")
    parser.add_argument("--train-by-hand", nargs=3, metavar=("DATA", "LR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_by_hand:
        data, lr, out = args.train_by_hand
        train_by_hand(data, lr, Path(out), args.steps)
        return

    sides = {"sft_lab": sft_lab_side, "by_hand": by_hand_side}
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name in list(sides) if (r + args.by_hand_first) % 2 == 0 else list(sides)[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                wall, peak, scores = sides[name](args, Path(tmp))
            row[name] = {"wall_s": round(wall, 1), "peak_rss_mb": peak, "scores": scores}
            print(f"round {r} {name}: {wall:.0f} s, peak RSS {peak} MB", file=sys.stderr)
        rounds.append(row)
    ratios = [x["by_hand"]["wall_s"] / x["sft_lab"]["wall_s"] for x in rounds]
    last = rounds[-1]
    checks = {f"{cfg}/{t}": (last["sft_lab"]["scores"][cfg][t], last["by_hand"]["scores"][cfg][t])
              for cfg in last["sft_lab"]["scores"] for t in TASKS}
    agreed = all(agree(a, b, args.limit) for a, b in checks.values())
    print(f"Grid data={','.join(DATA)} x lr={','.join(LRS)}, SmolLM2-135M LoRA r8, {args.steps} steps, "
          f"{','.join(TASKS)} at {args.limit} items, {args.rounds} round(s), CPU fp32")
    print("| side | wall s | peak RSS MB |")
    print("|---|---|---|")
    for name in sides:
        print(f"| {name} | {' / '.join(str(x[name]['wall_s']) for x in rounds)} | "
              f"{max(x[name]['peak_rss_mb'] for x in rounds)} |")
    for key, (a, b) in checks.items():
        print(f"  {key}: sft_lab {a:.3f}, by_hand {b:.3f}", file=sys.stderr)
    print(json.dumps({"benchmark": "study_throughput", "steps": args.steps, "limit": args.limit, "rounds": rounds,
                      "speedup_vs_by_hand": round(statistics.median(ratios), 2),
                      "accuracies_agree_within_noise": agreed}))
    if not agreed:
        sys.exit("the two sides' accuracies differ beyond sampling noise: the comparison is not like for like")


if __name__ == "__main__":
    main()
