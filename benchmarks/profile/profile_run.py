"""Where one whole run's wall time goes, phase by phase, and the floor no harness change can go under.

    python -m benchmarks.profile.profile_run [--rounds 2] -- OVERRIDES...
    python -m benchmarks.profile.profile_run -- model=tiny tracking=none 'eval.tasks=[arc_easy,piqa]' eval.limit=200

Runs `python -m sft_lab.run OVERRIDES` in a fresh process (a fresh runs folder each round) with timers
around its phases: start-up (interpreter, imports of sft_lab.run and Hydra's config), setup (data,
tokenizer, model), start (task files, first record), training, evaluation split into scoring (the
model's forward passes), the held-out loss and the rest (lm-eval's task building, metrics, files), and
the finish (record, tracker). Then it times the floor: a fresh interpreter importing the libraries a
run needs (torch, transformers, peft, lm-eval, Hydra), which every run pays whatever the harness does.
Wall times, not cProfile, so Python-heavy phases are not inflated. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT  # noqa: E402

# Runs inside the child: wraps the phases with timers, then hands over to the real entry point.
CHILD = r"""
import json, sys, time
times, out = {}, sys.argv.pop(1)

def timed(owner, name, key):
    inner = getattr(owner, name)
    def wrapper(*a, **k):
        start = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            times[key] = times.get(key, 0.0) + time.perf_counter() - start
    setattr(owner, name, wrapper)

import sft_lab.run
from sft_lab import phases, evaluate, scoring, pipeline
for name in ("setup", "start", "train", "evaluate"):
    timed(phases, name, name)
timed(evaluate, "heldout_loss", "heldout_loss")
timed(scoring.ContinuationLM, "_loglikelihood_tokens", "scoring")
timed(pipeline, "run", "run")
try:
    sft_lab.run.main()
finally:
    json.dump(times, open(out, "w"))
"""

FLOOR = "import torch, transformers, peft, lm_eval, hydra, omegaconf; from transformers import Trainer"


def one_round(overrides: list[str], tmp: Path, r: int) -> dict[str, float]:
    out = tmp / f"times-{r}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), *overrides, f"paths.runs_dir={tmp / f'runs-{r}'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the run failed:\n{proc.stderr[-3000:]}")
    t = json.loads(out.read_text())
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR], cwd=ROOT, env=env, check=True, capture_output=True)
    floor = time.perf_counter() - start
    phases = {
        "start-up (interpreter, imports, config)": wall - t["run"],
        "setup (data, tokenizer, model)": t.get("setup", 0.0),
        "start (task files, record)": t.get("start", 0.0),
        "train": t.get("train", 0.0),
        "eval: scoring (forward passes)": t.get("scoring", 0.0),
        "eval: held-out loss": t.get("heldout_loss", 0.0),
        "eval: lm-eval tasks, metrics, files": t.get("evaluate", 0.0) - t.get("scoring", 0.0) - t.get("heldout_loss", 0.0),
        "finish, tracker, the rest": t["run"] - sum(t.get(k, 0.0) for k in ("setup", "start", "train", "evaluate")),
    }
    return {**phases, "wall": wall, "floor: interpreter + library imports": floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    overrides = argv[cut + 1:]
    with tempfile.TemporaryDirectory() as tmp:
        rounds = [one_round(overrides, Path(tmp), r) for r in range(args.rounds)]
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"python -m sft_lab.run {' '.join(overrides)}; median of {args.rounds} rounds")
    print("| part | s | share of the run |")
    print("|---|---|---|")
    for k, v in median.items():
        print(f"| {k} | {v:.1f} | {v / median['wall']:.0%} |")
    print(json.dumps({"benchmark": "profile_run", "overrides": overrides,
                      "seconds": {k: round(v, 2) for k, v in median.items()}}))


if __name__ == "__main__":
    main()
