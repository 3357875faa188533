"""Start-up (`--help`, `--cfg job`) and re-launch of a finished 4-run multirun.

    python -m benchmarks.speed.startup_relaunch

Targets: start-up at most 2 s; a re-launched finished multirun at most 5% of its first wall time, and
it trains nothing (every record's `updated` stamp is unchanged). The multirun is the tiny model's
(the re-launch cost does not depend on the model). Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT  # noqa: E402


def timed(args: list[str], cwd) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sft_lab.run", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        helps = [timed(["--help"], tmp) for _ in range(5)]
        cfgs = [timed(["--cfg", "job"], tmp) for _ in range(5)]
        runs = Path(tmp) / "runs"
        grid = ["-m", "data=alpaca,dolly", "lr=1e-5,2e-5", "model=tiny", "tracking=none", "data.examples=64",
                "train.max_steps=5", "train.batch_size=4", "eval.tasks=[arc_easy,heldout]", "eval.limit=20",
                f"paths.runs_dir={runs}"]
        first = timed(grid, tmp)
        stamps = {p: json.loads(p.read_text())["updated"] for p in runs.glob("*/record.json")}
        again = timed(grid, tmp)
        untouched = all(json.loads(p.read_text())["updated"] == s for p, s in stamps.items())
    result = {"benchmark": "startup_relaunch", "help_s": round(statistics.median(helps), 2),
              "cfg_job_s": round(statistics.median(cfgs), 2), "multirun_first_s": round(first, 1),
              "multirun_relaunch_s": round(again, 1), "relaunch_fraction": round(again / first, 3),
              "records": len(stamps), "relaunch_trained_nothing": untouched}
    print("| what | seconds | target |")
    print("|---|---|---|")
    print(f"| `python -m sft_lab.run --help` (median of 5) | {result['help_s']} | <= 2 |")
    print(f"| `python -m sft_lab.run --cfg job` (median of 5) | {result['cfg_job_s']} | <= 2 |")
    print(f"| 4-run multirun, first launch | {result['multirun_first_s']} | |")
    print(f"| same multirun, re-launched ({result['relaunch_fraction']:.1%}, trained nothing: {untouched}) | "
          f"{result['multirun_relaunch_s']} | <= 5% |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
