"""A careless or hostile user: names that try to leave the runs folder, derived files that break, unwritable
places, exports onto user files, tables that would hide a column, grids with bad configurations."""

import contextlib
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, kill_after_first_checkpoint, run_cli

from sft_lab import index
from sft_lab.files import atomic_write
from sft_lab.record import RunRecord, write_record

HOSTILE = ["../../victim", "/etc/passwd", "a/b", "x\x00y", "." * 3, "..", "n" * 1000, "tab\tand space"]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"<link>")
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("text", HOSTILE)
def test_a_name_is_always_one_safe_path_component(text):
    name = index.safe_name(text)
    assert "/" not in name and "\x00" not in name and name not in (".", "..") and not name.startswith(".")
    assert 0 < len(name) <= index.MAX_NAME


def test_run_name_from_hostile_config_names_stays_one_component():
    from sft_lab.phases import run_name

    config = {"model": {"name": "../../victim"}, "data": {"name": "a/b"}, "template": {"name": "/abs"},
              "lora": {"r": 8}, "lr": 2e-4, "seed": 0}
    name = run_name(config)
    assert "/" not in name and not name.startswith(".") and name.startswith("_.._victim-a_b-_abs")


def record_in(runs: Path, name: str, fp: str = "f" * 64) -> RunRecord:
    run_dir = runs / fp[:16]
    record = RunRecord(status="finished", fingerprint=fp, run_dir=str(run_dir), config={"data": {"name": "x"}},
                       name=name)
    write_record(run_dir, record)
    return record


@pytest.mark.parametrize("name", HOSTILE)
def test_links_stay_inside_by_name_and_nothing_above_the_runs_folder_changes(tmp_path, name):
    """A record written before names were made safe still cannot link outside by-name/."""
    above = tmp_path / "a"
    runs = above / "b" / "runs"
    (above / "victim-file").parent.mkdir(parents=True)
    (above / "victim-file").write_text("precious")
    (tmp_path / "victim").write_text("precious too")
    record = record_in(runs, name)
    before = files_under(tmp_path)
    index.update(runs, record)
    after = files_under(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert all(k.startswith("a/b/runs/") for k in changed), changed
    links = list((runs / "by-name").iterdir())
    assert len(links) == 1 and links[0].is_symlink() and links[0].resolve() == Path(record.run_dir).resolve()


def test_an_entry_sft_lab_did_not_make_is_never_replaced(tmp_path, caplog):
    runs = tmp_path / "runs"
    record = record_in(runs, "smollm2-alpaca")
    (runs / "by-name").mkdir(parents=True)
    (runs / "by-name" / "smollm2-alpaca").write_text("the user's notes")
    (runs / "by-name" / f"smollm2-alpaca-{'f' * 8}").mkdir()  # and a folder where the second choice goes
    index.update(runs, record)
    assert (runs / "by-name" / "smollm2-alpaca").read_text() == "the user's notes"
    assert (runs / "by-name" / f"smollm2-alpaca-{'f' * 8}").is_dir()
    assert "no link made" in caplog.text


def test_a_malformed_index_is_rebuilt_from_the_records(tmp_path, caplog):
    runs = tmp_path / "runs"
    first = record_in(runs, "one", "1" * 64)
    second = record_in(runs, "two", "2" * 64)
    (runs / "index.csv").write_text("name,status\nbroken,\n\x00garbage\n")
    index.update(runs, second)
    rows = list(__import__("csv").DictReader((runs / "index.csv").open()))
    assert sorted(r["name"] for r in rows) == ["one", "two"] and first.fingerprint[:16] in {r["fingerprint"] for r in rows}
    assert "malformed" in caplog.text


def test_derived_files_that_cannot_be_written_only_warn(tmp_path, caplog):
    runs = tmp_path / "runs"
    record = record_in(runs, "name")
    (runs / "index.csv").mkdir()  # a folder where the index goes
    index.update(runs, record)  # does not raise
    assert "not updated" in caplog.text


def test_atomic_write_on_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    path.write_text('{"status": "finished"}')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, '{"status": "running"}')
    assert path.read_text() == '{"status": "finished"}'
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


@pytest.mark.parametrize("override, key", [("train.epochs=nan", "train.epochs"), ("train.epochs=inf", "train.epochs"),
                                           ("lr=inf", "lr"), ("train.weight_decay=nan", "train.weight_decay")])
def test_non_finite_numbers_are_refused_by_name(override, key):
    from hydra import compose, initialize_config_dir

    from sft_lab.config import ConfigError, validate

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[override, "train.max_steps=null"] if "epochs" in override else [override])
    with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
        validate(cfg)


# ---------------------------------------------------------------- export


def finished_run(tmp_path: Path, status: str) -> Path:
    from sft_lab.artifacts import TRAINED

    run_dir = tmp_path / "run"
    write_record(run_dir, RunRecord(status=status, fingerprint="e" * 64, run_dir=str(run_dir), config={}, name="r"))
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / TRAINED).write_text("{}")
    return run_dir


def export_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_lab.export", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow  # launches the export CLI three times
def test_export_never_overwrites_and_refuses_a_pruned_run(tmp_path):
    run_dir = finished_run(tmp_path, "pruned")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("the user's own")
    result = export_cli(run_dir, "--merge", "--out", out)
    assert result.returncode == 2 and "not empty" in result.stderr and "--overwrite" in result.stderr
    assert (out / "config.json").read_text() == "the user's own"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    result = export_cli(run_dir, "--merge", "--out", a_file)
    assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr
    result = export_cli(run_dir, "--merge", "--out", tmp_path / "new")
    assert result.returncode == 2 and "status pruned" in result.stderr and "--allow-unfinished" in result.stderr
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- tables


def test_a_metric_some_runs_lack_is_shown_and_named_never_dropped(tmp_path):
    from sft_lab.analysis import render
    from sft_lab.analysis import table as tbl

    rows = []
    for data in ("a", "b"):
        for seed in range(2):
            folder = tmp_path / f"{data}{seed}"
            (folder / "samples").mkdir(parents=True)
            tasks = ["arc_easy"] + (["piqa"] if data == "a" else [])
            for task in tasks:
                (folder / "samples" / f"{task}.jsonl").write_text("\n".join(json.dumps(
                    {"doc_id": i, "doc_hash": f"{task}{i}", "acc": float(i % 2)}) for i in range(20)))
            rows.append({"run_dir": str(folder), "name": f"{data}-s{seed}", "data": data, "seed": seed,
                         "baseline": False, "eval/arc_easy/acc": 0.5, "eval/piqa/acc": 0.5 if data == "a" else np.nan,
                         "protocol": json.dumps({"limit": 20, "n_shot": {t: 0 for t in tasks}}),
                         "train.tokens_seen": 1.0, "train.wall_s": 1.0})
    t = tbl.build(pd.DataFrame(rows), ["data"])
    assert "piqa/acc" in t.columns
    text = render.to_markdown(t)
    assert "piqa/acc, missing from b-s0, b-s1" in text
    b = next(r for r in t.rows if r.labels == ("b",))
    assert render.cell_text(b.cells["piqa/acc"]) == "–" and b.cells["arc_easy/acc"].n == 2


# ---------------------------------------------------------------- the command line


@contextlib.contextmanager
def read_only_folder(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (root ignores chmod): {made.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)])


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    flags = [a for a in args if a == "-m"]
    return subprocess.run([sys.executable, "-m", "sft_lab.run", *flags, "model=tiny", "tracking=none",
                           *[a for a in args if a != "-m"]], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow  # mounts a tmpfs, launches the CLI four times
def test_unwritable_places_get_one_clear_error_before_anything_starts(tmp_path):
    with read_only_folder(tmp_path) as ro:
        for args in ([f"paths.runs_dir={ro}/runs"], ["-m", "seed=0,1", f"paths.runs_dir={ro}/runs"],
                     [f"paths.runs_dir={tmp_path}/runs", f"paths.cache_dir={ro}/cache"]):
            out = cli(*args, cwd=tmp_path)
            assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
            assert "cannot write" in out.stderr and "Read-only file system" in out.stderr
    runs = tmp_path / "wb"
    runs.mkdir()
    (runs / "wandb").write_text("not a folder")
    out = subprocess.run([sys.executable, "-m", "sft_lab.run", "model=tiny", "tracking=wandb",
                          f"paths.runs_dir={runs}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2 and "the W&B folder" in out.stderr and "Traceback" not in out.stderr


def test_a_grid_names_every_bad_configuration_before_running_any(tmp_path):
    out = cli("-m", "lr=-1,2e-4,inf", f"paths.runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 2 and "2 of the grid's configurations are invalid; nothing was run" in out.stderr
    assert "lr=-1" in out.stderr and "lr=inf" in out.stderr
    assert not list((tmp_path / "runs").glob("*/record.json"))


@pytest.mark.e2e
def test_a_hostile_model_name_changes_nothing_outside_the_runs_folder(tmp_path):
    """The issue's case: model.name=../../victim replaced a file two levels above the runs folder."""
    runs = tmp_path / "x" / "y" / "runs"
    victim = tmp_path / "x" / "victim-alpaca-alpaca-r8-lr0.0002-s0"
    runs.parent.mkdir(parents=True)
    victim.write_text("precious")
    before = {k: v for k, v in files_under(tmp_path).items() if not k.startswith("x/y/runs")}
    out = run_cli(["model=tiny", "train.max_steps=3", "eval.tasks=[]", "tracking=none", f"paths.runs_dir={runs}",
                   "model.name=../../victim"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    after = {k: v for k, v in files_under(tmp_path).items() if not k.startswith("x/y/runs")}
    assert before == after and victim.read_text() == "precious"
    (link,) = (runs / "by-name").iterdir()
    assert link.is_symlink() and link.resolve().parent == runs.resolve()


@pytest.mark.e2e
def test_a_grid_runs_every_configuration_it_can_and_says_which_failed(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli(["-m", "model=tiny", "train.max_steps=2", "eval.tasks=[]", "tracking=none", f"paths.runs_dir={runs}",
                   "data.examples=16", "train.max_length=2,256"], cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "1 configuration(s) of this grid failed" in out.stderr and "train.max_length=2" in out.stderr
    recs = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    assert [r["config"]["train"]["max_length"] for r in recs if r["status"] == "finished"] == [256]


def test_outside_a_git_checkout_nothing_prints_fatal(tmp_path, monkeypatch, capfd):
    from sft_lab.evaluate import _quiet_lm_eval, quiet_git_hash

    monkeypatch.chdir(tmp_path)
    _quiet_lm_eval()
    import lm_eval.evaluator

    assert lm_eval.evaluator.get_git_commit_hash is quiet_git_hash
    quiet_git_hash()
    assert "fatal" not in capfd.readouterr().err


def test_a_missing_runs_folder_is_named_as_missing(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "analysis" / "ablation_table.py"), str(tmp_path / "nope"),
                          "--rows", "data"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no such folder" in out.stderr and "no finished runs" not in out.stderr


def test_packing_takes_a_boolean_not_any_number():
    from hydra import compose, initialize_config_dir

    from sft_lab.config import ConfigError, check_overrides

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["train.packing=2"])
    with pytest.raises(ConfigError, match="train.packing takes true or false, got train.packing=2"):
        check_overrides(cfg, ["train.packing=2"])
    check_overrides(cfg, ["train.packing=true", "lr=1e-4", "data=dolly"])


def test_mixed_protocols_are_refused_before_any_base_model_is_evaluated(tmp_path):
    for name, limit in (("a", 20), ("b", 40)):
        write_record(tmp_path / name, RunRecord(
            status="finished", fingerprint=name * 64, run_dir=str(tmp_path / name), name=name,
            config={"data": {"name": name}, "model": {"name": "tiny", "name_or_path": "x"}, "seed": 0},
            eval={"arc_easy": {"acc": {"value": 0.5, "stderr": 0.1}}},
            eval_protocol={"limit": limit, "n_shot": {"arc_easy": 0}, "task_versions": {"arc_easy": 1.0}}))
    out = subprocess.run([sys.executable, str(ROOT / "analysis" / "ablation_table.py"), str(tmp_path), "--rows", "data"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "differ in eval protocol" in out.stderr and "limit[arc_easy]" in out.stderr
    assert "evaluating the base model" not in out.stderr


@pytest.mark.e2e
def test_sigterm_leaves_an_interrupted_record_not_a_running_one_and_resumes(tmp_path):
    import signal

    runs = tmp_path / "runs"
    args = ["model=tiny", "train.max_steps=400", "train.save_steps=2", "eval.tasks=[]", "tracking=none",
            f"paths.runs_dir={runs}"]
    status = kill_after_first_checkpoint("sft_lab.run", args, runs, tmp_path, {**os.environ, "PYTHONPATH": str(ROOT)},
                                         sig=signal.SIGTERM)
    assert status == 130
    (record,) = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    assert record["status"] == "interrupted" and record["error"] == "interrupted (SIGTERM)"


def test_a_journal_sweep_left_with_a_dead_workers_trial_says_it_is_unfinished(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from sft_lab.sweep.cli import unfinished

    url = f"journal:{tmp_path / 'study.log'}"
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.log"))), study_name="s")
    assert unfinished(study, url) is None
    study.ask()  # a worker claimed it, then died: RUNNING for good
    hint = unfinished(study, url)
    assert hint and "[0]" in hint and "no heartbeat" in hint and "run the same command again" in hint
    assert unfinished(study, "sqlite:///x.db") is None  # RDB storages fail it by its heartbeat
