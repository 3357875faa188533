"""Greedy generation: sft-lab's continuous batch (sft_lab.generate) vs lm-eval's `hf` model, side by side.

    python -m benchmarks.speed.generate_throughput                       # SmolLM2-135M, 32 IFEval prompts
    python -m benchmarks.speed.generate_throughput --prompts 64 --max-gen-toks 256 --rounds 2
    python -m benchmarks.speed.generate_throughput --model tiny          # plumbing only (a random model)

The same IFEval prompts, rendered by the same template, the same stop strings, `max_gen_toks` and batch
size go through both paths' `generate_until`, in alternating order over the rounds. Prints answer tokens
per second for each side (answer tokens: each side's answers re-tokenised, so both count the same way),
the ratio, how many greedy answers are identical, and the four IFEval metrics of each side's answers,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2_135m", help="a conf/model preset (default smollm2_135m)")
    p.add_argument("--template", default="chatml", help="a conf/template preset (default chatml)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-gen-toks", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16, help="lm-eval hf's batch (eval.batch_size's default)")
    p.add_argument("--gen-batch-size", type=int, default=32, help="sft-lab's continuous batch (eval.gen_batch_size)")
    p.add_argument("--hf-also", type=int, default=None, help="lm-eval hf at this batch size too (e.g. 32)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of both sides, alternating which goes first")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--layers", type=int, default=None, help="a random model of this many SmolLM2-sized layers")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from sft_lab.config import compose
    from sft_lab.generate import EvalLM
    from sft_lab.ifeval import load_docs, score as ifeval_score
    from sft_lab.models import load_model, load_tokenizer
    from sft_lab.templates import generation_stops, render_prompt

    overrides = [f"model={args.model}", f"template={args.template}"]
    cfg = compose(overrides)
    tok = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    model = load_model(cfg.model, tok, cfg.paths.cache_dir, 0)
    model.eval()
    docs = load_docs(cfg.paths.data_dir)[: args.prompts]
    until = generation_stops(cfg.template, tok).until
    gen_kwargs = {"until": until, "max_gen_toks": args.max_gen_toks, "do_sample": False}
    contexts = [render_prompt([{"role": "user", "content": d["prompt"]}, {"role": "assistant", "content": ""}],
                              cfg.template, tok)[0] for d in docs]

    def requests():
        return [Instance("generate_until", doc=d, arguments=(c, dict(gen_kwargs)), idx=i)
                for i, (c, d) in enumerate(zip(contexts, docs))]

    sides = {"lm-eval hf": HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)}
    if args.hf_also:
        sides[f"lm-eval hf@{args.hf_also}"] = HFLM(pretrained=model, tokenizer=tok, batch_size=args.hf_also)
    sides["sft-lab"] = EvalLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
    sides["sft-lab"].gen_batch_size = args.gen_batch_size
    timings = {name: [] for name in sides}
    answers: dict[str, list[str]] = {}
    order = list(sides)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            answers[name] = sides[name].generate_until(requests(), disable_tqdm=True)
            timings[name].append(time.perf_counter() - start)
            print(f"round {r + 1} {name}: {timings[name][-1]:.1f} s", file=sys.stderr)
    tokens = {n: sum(len(tok(a, add_special_tokens=False).input_ids) for a in answers[n]) for n in sides}
    speed = {n: tokens[n] / min(timings[n]) for n in sides}
    same = sum(a == b for a, b in zip(answers["lm-eval hf"], answers["sft-lab"]))
    scores = {n: ifeval_score(docs, answers[n]) for n in sides}
    print(f"{args.model}, template {args.template}, {len(docs)} IFEval prompts, max_gen_toks {args.max_gen_toks}, "
          f"lm-eval hf batch {args.batch_size}, sft-lab continuous batch {args.gen_batch_size}, "
          f"{torch.get_num_threads()} threads, {args.rounds} round(s), best time per side")
    for n in sides:
        print(f"  {n:15s} {min(timings[n]):7.1f} s  {tokens[n]:6d} answer tokens  {speed[n]:7.1f} tok/s  "
              + "  ".join(f"{k} {v:.3f}" for k, v in scores[n].items()))
    ratio = speed["sft-lab"] / speed["lm-eval hf"]
    print(f"  sft-lab / lm-eval hf: {ratio:.2f}x answer tokens per second; identical greedy answers: "
          f"{same}/{len(docs)} ({same / len(docs):.1%})")
    if args.hf_also:
        best = max(speed[n] for n in sides if n.startswith("lm-eval"))
        print(f"  sft-lab / the faster lm-eval hf batch: {speed['sft-lab'] / best:.2f}x")
    print(json.dumps({"bench": "generate_throughput", "model": args.model, "prompts": len(docs),
                      "max_gen_toks": args.max_gen_toks, "batch_size": args.batch_size,
                      "gen_batch_size": args.gen_batch_size,
                      "seconds": {n: min(t) for n, t in timings.items()}, "answer_tokens": tokens,
                      "tokens_per_s": speed, "ratio": ratio, "identical": same / len(docs), "ifeval": scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
