"""Evaluate finished runs again, without training: add tasks to their records.

    python -m sft_lab.evaluate RUNS_DIR 'eval.tasks=[ifeval]' eval.limit=200
    python -m sft_lab.evaluate RUNS_DIR 'eval.tasks=[ifeval,gen_alpaca]' eval.max_gen_toks=256 --dry-run

Every finished run under RUNS_DIR, base-model runs included, gets the eval.tasks it does not have yet:
its saved weights are loaded onto the base model, prompts are rendered by the template it trained with
(checked by fingerprint), and the results join its record with their own protocol (limit, max_gen_toks,
decoding per task). A task a run already has with the same protocol is skipped, so a second identical
call does nothing. A task it has with another protocol is refused: finished results are never overwritten.
Only eval.* and paths.* may be overridden: anything else would change what was trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from sft_lab import record as rec
from sft_lab.errors import UserError

log = logging.getLogger("sft_lab")
ALLOWED = ("eval.", "paths.")


class ReevalError(UserError):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sft_lab.evaluate", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir", help="a runs folder (paths.runs_dir), or one run folder")
    p.add_argument("overrides", nargs="*", help="eval.KEY=VALUE or paths.KEY=VALUE, as on the run command line")
    p.add_argument("--dry-run", action="store_true", help="say what would be evaluated, and evaluate nothing")
    return p.parse_args(argv)


def run_folders(runs_dir: Path) -> list[Path]:
    if (runs_dir / rec.RECORD).is_file():
        return [runs_dir]
    if not runs_dir.is_dir():
        raise ReevalError(f"{runs_dir} is not a folder")
    found = sorted(p.parent for p in runs_dir.glob(f"*/{rec.RECORD}") if p.parent.name not in ("by-name", "previous"))
    if not found:
        raise ReevalError(f"{runs_dir} holds no run folders (no */{rec.RECORD})")
    return found


def config_for(record: rec.RunRecord, overrides: list[str]):
    """The run's own config with the eval/paths overrides applied, checked as a run's config is."""
    from sft_lab.config import SFTConfig, expand_heldout, validate

    bad = [o for o in overrides if not o.split("=", 1)[0].lstrip("+").startswith(ALLOWED) or "=" not in o]
    if bad:
        raise ReevalError(f"re-evaluation overrides only eval.* and paths.* keys (KEY=VALUE); got {bad}: anything else "
                          "would change what was trained. Train a new run for that.")
    cfg = OmegaConf.merge(OmegaConf.structured(SFTConfig), record.config)
    try:
        for o in overrides:
            key, value = o.split("=", 1)
            OmegaConf.update(cfg, key.lstrip("+"), OmegaConf.create({"v": _value(value)})["v"], merge=False)
    except Exception as e:  # an unknown key or a wrong type, named by OmegaConf
        raise ReevalError(f"override {o!r}: {str(e).splitlines()[0]}") from None
    if any(o.startswith("eval.tasks=") for o in overrides) and not any(o.startswith("eval.heldout=") for o in overrides):
        cfg.eval.heldout = "own"  # the tasks named, not also every heldout_<source> of an eval.heldout=all run
    validate(cfg)
    expand_heldout(cfg.eval)
    return cfg


def _value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def task_limit(protocol: dict, task: str):
    return (protocol.get("limits") or {}).get(task, protocol.get("limit"))


def plan(record: rec.RunRecord, cfg) -> list[str]:
    """The tasks to add; ReevalError for a task the run has under another protocol."""
    have = record.eval or {}
    protocol = record.eval_protocol or {}
    todo = []
    for task in cfg.eval.tasks:
        if task not in have:
            todo.append(task)
            continue
        limit = task_limit(protocol, task)
        gen = (protocol.get("generation") or {}).get(task)
        differs = [f"limit {limit} (asked {cfg.eval.limit})"] if limit != cfg.eval.limit else []
        if gen and gen.get("max_gen_toks") != cfg.eval.max_gen_toks:
            differs.append(f"max_gen_toks {gen.get('max_gen_toks')} (asked {cfg.eval.max_gen_toks})")
        if differs:
            raise ReevalError(f"{record.run_dir}: {task} was evaluated with {', '.join(differs)}; its results are "
                              "never overwritten. Ask for the same settings, or copy the runs to another folder first.")
    return todo


def reevaluate(run_dir: Path, record: rec.RunRecord, cfg, tasks: list[str]) -> rec.RunRecord:
    """Loads the run's weights, evaluates `tasks` and adds them to its record."""
    from sft_lab import phases
    from sft_lab.templates import fingerprint_template
    from sft_lab.artifacts import load_trained

    eval_cfg = OmegaConf.merge(cfg, {"eval": {"tasks": tasks}})
    with rec.run_lock(run_dir):
        inputs = phases.setup(eval_cfg)
        expected = (record.data or {}).get("template_fingerprint")
        now = fingerprint_template(cfg.template, inputs.tokenizer)
        if expected and expected != now:
            raise ReevalError(f"{run_dir}: the template {cfg.template.name!r} renders differently now (fingerprint "
                              f"{now}) than when the run trained ({expected}); its prompts would not be the ones it "
                              "learnt. Evaluate with the sft-lab version it was trained with.")
        if not cfg.baseline:
            if not rec_weights(run_dir):
                raise ReevalError(f"{run_dir}: no saved weights (adapter/ or model/) to evaluate")
            inputs.model, _ = load_trained(inputs.model, run_dir)
        phases.write_task_folder(eval_cfg, run_dir, inputs)
        added = rec.RunRecord(**{**record.__dict__, "eval": None, "eval_protocol": None, "warnings": []})
        phases.evaluate(eval_cfg, inputs.model, inputs, run_dir, added)
        record = rec.read_record(run_dir)  # the newest record, under the lock
        merge(record, added, tasks)
        rec.write_record(run_dir, record)
    return record


def rec_weights(run_dir: Path) -> bool:
    from sft_lab.artifacts import trained_result

    return trained_result(run_dir) is not None


def merge(record: rec.RunRecord, added: rec.RunRecord, tasks: list[str]) -> None:
    """Adds a re-evaluation's results and their protocol, per task, to the record."""
    new = added.eval_protocol or {}
    record.eval = {**(record.eval or {}), **(added.eval or {})}
    p = dict(record.eval_protocol or {})
    old_tasks = list(p.get("tasks") or [])
    p["limits"] = {**{t: p.get("limit") for t in (record.eval or {}) if t not in tasks}, **(p.get("limits") or {}),
                   **(new.get("limits") or {})}
    for key in ("task_versions", "n_shot", "task_hashes", "generation"):
        p[key] = {**(p.get(key) or {}), **(new.get(key) or {})}
    p["tasks"] = old_tasks + [t for t in tasks if t not in old_tasks]
    p["added"] = [*(p.get("added") or []), {"tasks": tasks, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "lm_eval_version": new.get("lm_eval_version"), "git": rec.git_state()}]
    record.eval_protocol = p
    record.warnings = sorted(set(record.warnings) | set(added.warnings))


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        folders = run_folders(Path(args.runs_dir))
        work = []
        for folder in folders:
            record = rec.read_record(folder)
            if record is None or record.status != "finished":
                log.info("skipping %s (%s)", folder, record.status if record else "no record")
                continue
            cfg = config_for(record, args.overrides)
            if not any(o.startswith("paths.runs_dir=") for o in args.overrides):
                cfg.paths.runs_dir = str(folder.parent)  # where it is now, whatever it was run as
            todo = plan(record, cfg)
            if todo:
                work.append((folder, record, cfg, todo))
        if not work:
            print(f"nothing to evaluate: every finished run in {args.runs_dir} has these tasks already")
            return 0
        for folder, record, _, todo in work:
            print(f"{'would evaluate' if args.dry_run else 'evaluating'} {', '.join(todo)} on {record.name} ({folder})")
        if args.dry_run:
            return 0
        for i, (folder, record, cfg, todo) in enumerate(work, 1):
            log.info("[%d/%d] %s: %s", i, len(work), record.name, ", ".join(todo))
            done = reevaluate(folder, record, cfg, todo)
            summary = {t: {m: round(v["value"], 4) for m, v in done.eval[t].items()} for t in todo if t in done.eval}
            print(f"{record.name}: {json.dumps(summary)}" + (f"  WARNING: {'; '.join(done.warnings)}" if done.warnings else ""))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
