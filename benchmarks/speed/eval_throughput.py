"""Eval throughput: sft-lab's in-process evaluation of a trained model vs lm-eval's own `hf` model
loading the saved model (base + LoRA adapter) from disk.

    python -m benchmarks.speed.eval_throughput [--tasks arc_easy,piqa] [--limit 100] [--rounds 2] [--also-unmerged]

Held equal: SmolLM2-135M-Instruct + the same LoRA adapter (r8), the same task YAMLs and limit, batch
size 16, fp32 on CPU. Both sides run in this process, alternating, and items/s is reported with and
without the model load (sft-lab evaluates the model it just trained, so it loads nothing). sft-lab folds
the adapter into the weights first, as the pipeline does, and that is timed; --also-unmerged adds a side
that evaluates the adapter as it is. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="arc_easy,piqa")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--also-unmerged", action="store_true", help="also time sft-lab without folding the adapter")
    args = parser.parse_args()

    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sft_lab.config import compose
    from sft_lab.evaluate import evaluate
    from sft_lab.tasks import write_tasks
    from sft_lab.models import add_lora, load_model, load_tokenizer, local_path, merged_for_eval

    tasks = args.tasks.split(",")
    cfg = compose([f"eval.tasks=[{args.tasks}]", f"eval.limit={args.limit}", "eval.log_samples=false"])
    work = Path(tempfile.mkdtemp())
    write_tasks(work / "tasks", cfg.paths.data_dir, [])
    base_path = local_path(cfg.model.name_or_path, cfg.paths.cache_dir)
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    torch.manual_seed(0)
    model = add_lora(load_model(cfg.model, tok, cfg.paths.cache_dir, 0), cfg.lora)
    for name, p in model.named_parameters():  # a "trained" adapter: non-zero LoRA B, so it changes the model
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    model.save_pretrained(work / "adapter")
    items = args.limit * len(tasks)

    def sft_lab_side(merge: bool = True):
        # The pipeline evaluates the model it just trained, in memory: there is no load to pay. It folds the
        # adapter in, in place, so each round gets its own copy (made outside the timing).
        trained = copy.deepcopy(model)
        start = time.perf_counter()
        metrics, _, _ = evaluate(merged_for_eval(trained) if merge else trained, tok, cfg.eval, work / "tasks", work)
        return 0.0, time.perf_counter() - start, metrics

    def lm_eval_side():
        start = time.perf_counter()
        lm = HFLM(pretrained=base_path, peft=str(work / "adapter"), dtype="float32", device="cpu", batch_size=16)
        loaded = time.perf_counter()
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=args.limit, num_fewshot=0, bootstrap_iters=1000,
                                      task_manager=TaskManager(include_path=str(work / "tasks"), include_defaults=False))
        return loaded - start, time.perf_counter() - loaded, res["results"]

    rows = {"sft_lab": [], "lm_eval_hf": []}
    order = [("sft_lab", sft_lab_side), ("lm_eval_hf", lm_eval_side)]
    if args.also_unmerged:
        rows["sft_lab_unmerged"] = []
        order.insert(1, ("sft_lab_unmerged", lambda: sft_lab_side(merge=False)))
    for r in range(args.rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            load_s, eval_s, metrics = fn()
            rows[name].append({"load_s": load_s, "eval_s": eval_s})
            acc = (metrics[tasks[0]]["acc,none"] if name == "lm_eval_hf" else metrics[tasks[0]]["acc"]["value"])
            print(f"round {r} {name}: load {load_s:.1f} s, eval {eval_s:.1f} s, {tasks[0]} acc {acc:.3f}", file=sys.stderr)
    summary = {}
    for name, rs in rows.items():
        load, ev = statistics.median(x["load_s"] for x in rs), statistics.median(x["eval_s"] for x in rs)
        summary[name] = {"load_s": round(load, 2), "eval_s": round(ev, 2), "items_per_s_excl_load": round(items / ev, 2),
                         "items_per_s_incl_load": round(items / (load + ev), 2)}
    ratio_ex = round(summary["sft_lab"]["items_per_s_excl_load"] / summary["lm_eval_hf"]["items_per_s_excl_load"], 3)
    ratio_in = round(summary["sft_lab"]["items_per_s_incl_load"] / summary["lm_eval_hf"]["items_per_s_incl_load"], 3)
    print(f"SmolLM2-135M + LoRA r8, tasks {args.tasks}, limit {args.limit}, {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")
    print("| side | load s | eval s | items/s (excl. load) | items/s (incl. load) |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['load_s']} | {s['eval_s']} | {s['items_per_s_excl_load']} | {s['items_per_s_incl_load']} |")
    extra = {}
    if args.also_unmerged:
        extra["ratio_merged_vs_unmerged"] = round(summary["sft_lab_unmerged"]["eval_s"] / summary["sft_lab"]["eval_s"], 3)
    print(json.dumps({"benchmark": "eval_throughput", "tasks": tasks, "limit": args.limit, "sides": summary,
                      "ratio_excl_load": ratio_ex, "ratio_incl_load": ratio_in, **extra}))


if __name__ == "__main__":
    main()
