"""`python -m sft_lab.ablate`: tune every arm on dev items, replicate each arm's best with fresh seeds on test
items, write the table, the tuning curves and the learning curves."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sft_lab.ablate import __doc__ as ablate_doc
from sft_lab.errors import UserError

log = logging.getLogger("sft_lab.ablate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m sft_lab.ablate", description=ablate_doc.split("\n\n")[1],
        epilog="Example: python -m sft_lab.ablate sweeps/ablate_toy.yaml  (see docs/ablations.md)")
    p.add_argument("ablation_file", help="an ablation YAML: arms, tune, trials, tuning_seeds, seeds, objective, final")
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes per arm's tuning: one GPU each on a GPU node; on CPU they share the "
                        "cores. 0: queue every arm's trials, print the worker command for each, and wait for "
                        "workers started elsewhere (Slurm) on the same --storage")
    p.add_argument("--storage", help="sqlite:///..., postgresql://user@host:port/db or journal:/shared/path.log")
    p.add_argument("--out", help="output folder (default: <runs_dir>/ablate/<study_name>)")
    p.add_argument("--no-base", action="store_true", help="no base-model row in the table")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    args = parse_args(argv)
    from sft_lab.ablate import report
    from sft_lab.ablate.run import finals, queue, storage_url, tune
    from sft_lab.ablate.spec import arm_overrides, load_spec
    from sft_lab.config import compose
    from sft_lab.sweep.cli import interrupted
    from sft_lab.sweep.worker import quiet_optuna

    quiet_optuna()
    try:
        if args.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {args.workers}")
        spec = load_spec(args.ablation_file)
        runs_dir = compose([*spec.fixed, *args.overrides]).paths.runs_dir
        out = Path(args.out or Path(runs_dir) / "ablate" / spec.study_name)
        out.mkdir(parents=True, exist_ok=True)
        url = storage_url(spec, runs_dir, args.storage)
        queued = [queue(spec, label, overrides, args.overrides, url, out) for label, overrides in arm_overrides(spec)]
        if args.workers == 0:
            for q in queued:
                extra = (" \"overrides=[" + ",".join(f"'{o}'" for o in args.overrides) + "]\"") if args.overrides else ""
                print(f"arm {q.label}: python -m sft_lab.sweep.worker -m sweep_file={q.path} storage={url} "
                      f"\"study_name='{q.sweep.study_name}'\"{extra} worker=0,1 hydra/launcher=submitit_slurm ...",
                      file=sys.stderr)
        arms = [tune(q, args.overrides, url, args.workers) for q in queued]
        for arm in arms:
            finals(spec, arm, args.overrides, spec.study_name)
        path = report.write(spec, runs_dir, arms, out, base=not args.no_base)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted("ablation")
    print(path.read_text())
    print(f"wrote {path}", file=sys.stderr)
    return 0
