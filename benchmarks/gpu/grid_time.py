"""A grid on the pool's devices (`hydra/launcher=gpus`) against one job alone: is it jobs / k times faster?

    python -m benchmarks.gpu.grid_time [--jobs 8] [--per-device 1] [overrides of one job ...]

One job (seed 100) runs alone in a fresh process; then the grid (seeds 0..jobs-1, the same overrides) runs
through the gpus launcher with `per-device` jobs on each of the k devices ($SFT_LAB_DEVICES or the visible
GPUs). Issue 29's target: grid time <= 1.2 x (one job's time x jobs / k). Prints a table and one JSON line.
On a CPU machine a fake device list runs it as a smoke test (the jobs then share the cores):
    SFT_LAB_DEVICES=0,1 python -m benchmarks.gpu.grid_time --jobs 2 +experiment=toy train.max_steps=5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, timed
from sft_lab.devices import pool_devices

TARGET = 1.2


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--per-device", type=int, default=1, help="jobs at once on each device")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of every job (default: the toy setting)")
    args = parser.parse_args(argv)
    devices = pool_devices()
    if not devices:
        sys.exit("no device: run on a GPU machine, or give a fake list, e.g. SFT_LAB_DEVICES=0,1")
    run = [sys.executable, "-m", "sft_lab.run"]
    overrides = [*(args.overrides or ["+experiment=toy"]), "tracking=none"]
    with tempfile.TemporaryDirectory(prefix="sft-lab-grid-") as tmp:
        one_s, _ = timed([*run, *overrides, "seed=100", f"paths.runs_dir={tmp}/one"], ROOT, ROOT)
        grid_s, peak_mb = timed([*run, "-m", *overrides, f"seed={','.join(map(str, range(args.jobs)))}", "hydra/launcher=gpus",
                                 f"hydra.launcher.n_jobs={len(devices) * args.per_device}", f"paths.runs_dir={tmp}/grid"],
                                ROOT, ROOT)
        finished = sum(json.loads(p.read_text())["status"] == "finished" for p in Path(tmp, "grid").glob("*/record.json"))
    ideal = one_s * args.jobs / len(devices)
    out = {"benchmark": "grid_time", "devices": devices, "jobs": args.jobs, "per_device": args.per_device,
           "one_job_s": round(one_s, 1), "grid_s": round(grid_s, 1), "ideal_s": round(ideal, 1),
           "grid_over_ideal": round(grid_s / ideal, 3), "target": TARGET, "finished": finished,
           "peak_host_rss_mb": peak_mb, "overrides": overrides}
    print(f"| devices | jobs | one job | grid | one x jobs / devices | grid / that (target <= {TARGET}) |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(devices)} | {args.jobs} ({args.per_device} a device) | {one_s:.1f} s | {grid_s:.1f} s | "
          f"{ideal:.1f} s | {grid_s / ideal:.2f} |")
    print(json.dumps(out))
    if finished != args.jobs:
        sys.exit(f"{finished} of {args.jobs} grid jobs finished")
    return out


if __name__ == "__main__":
    main()
