"""What the benchmarks share: the checkout's root, and a command's wall time and the peak RSS of its whole
process tree. Run every benchmark from the checkout's root as a module, e.g.
`python -m benchmarks.speed.train_throughput`; the data folder comes from SFT_LAB_DATA_DIR, as for runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], cwd: Path, pythonpath: Path) -> tuple[float, int]:
    """Run to the end; (wall seconds, peak RSS in MB of the process and its children, sampled every 0.2 s)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONPATH": str(pythonpath)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak, tail = 0, []
    reader = threading.Thread(target=lambda: tail.extend(proc.stdout), daemon=True)
    reader.start()
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    reader.join()
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{''.join(tail[-40:])}")
    return time.perf_counter() - start, round(peak / 2**20)
