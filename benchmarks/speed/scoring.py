"""Scoring only what lm-eval scores: sft-lab's ContinuationLM vs lm-eval's HFLM on the same model object.

    python -m benchmarks.speed.scoring [--model smollm2_135m] [--limit 40] [--no-lora] [--rounds 2]

Same in-memory model (SmolLM2-135M, plus an untrained LoRA r8 unless --no-lora), same task YAMLs
(ARC-Easy, PIQA), same limit, batch size 16, sides alternating. Checks every per-choice
log-likelihood agrees within 1e-4 and prints one JSON line with the time ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path



def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-lora", action="store_true")
    args = p.parse_args()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sft_lab.config import compose
    from sft_lab.models import add_lora, load_model, load_tokenizer
    from sft_lab.scoring import ContinuationLM
    from sft_lab.tasks import write_tasks

    cfg = compose([f"model={args.model}", ])
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = load_model(cfg.model, tok, cfg.paths.cache_dir, 0)
    model = (model if args.no_lora else add_lora(model, cfg.lora)).eval()
    tasks_dir = Path(tempfile.mkdtemp())
    write_tasks(tasks_dir, cfg.paths.data_dir, [])
    manager = TaskManager(include_path=[str(tasks_dir)], include_defaults=False)
    times = {"hf": 0.0, "continuation": 0.0}
    samples = {}
    for r in range(args.rounds):
        for name, cls in ((("hf", HFLM), ("continuation", ContinuationLM)) if r % 2 == 0
                          else (("continuation", ContinuationLM), ("hf", HFLM))):
            start = time.perf_counter()
            out = lm_eval.simple_evaluate(model=cls(pretrained=model, tokenizer=tok, batch_size=16),
                                          tasks=["arc_easy", "piqa"], limit=args.limit, task_manager=manager,
                                          log_samples=True, bootstrap_iters=0)
            times[name] += time.perf_counter() - start
            samples[name] = out["samples"]
    diff = max(abs(a[0][0] - b[0][0]) for t in samples["hf"] for sa, sb in zip(samples["hf"][t], samples["continuation"][t])
               for a, b in zip(sa["resps"], sb["resps"]))
    print(json.dumps({"model": args.model, "lora": not args.no_lora, "limit": args.limit, "rounds": args.rounds,
                      "hf_s": round(times["hf"], 1), "continuation_s": round(times["continuation"], 1),
                      "speedup": round(times["hf"] / times["continuation"], 3), "max_abs_loglik_diff": diff}))


if __name__ == "__main__":
    main()
