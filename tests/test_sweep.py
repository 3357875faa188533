"""Optuna sweeps on the tiny model: exact trial counts, resume, parallel workers on SQLite, a journal
file and a real PostgreSQL server, a killed worker, submitit_local, and bad input."""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, TINY, kill_after_first_checkpoint, run_cli

from sft_lab.sweep.spec import check, load_spec

SWEEP_OVERRIDES = [a for a in TINY if not a.startswith(("train.max_steps", "eval.tasks", "train.logging_steps"))] + [
    "train.max_steps=8", "train.logging_steps=4", "eval.tasks=[heldout]"]


def sweep_file(tmp_path, **changes) -> Path:
    spec = {
        "study_name": "lr", "space": {"lr": {"type": "float", "low": 1e-5, "high": 3e-3, "log": True}},
        "objective": {"metrics": ["heldout.loss"], "direction": "minimize"},
        "pruner": {"type": "median", "n_startup_trials": 2}, "prune_every": 4, "n_trials": 4, **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(spec))
    return path


def study_trials(storage: str, name: str = "lr"):
    import optuna

    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage[len("journal:"):]))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def assert_exact(trials, n: int, runs: Path):
    from optuna.trial import TrialState

    assert len(trials) == n, [(t.number, t.state.name) for t in trials]
    assert len({t.number for t in trials}) == n
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state.name for t in trials]
    done = [t.user_attrs["run_dir_seed0"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(set(done)) == len(done)  # no fingerprint trained twice
    for t in trials:  # each record knows its trial and how it ended
        rec = json.loads((Path(t.user_attrs["run_dir_seed0"]) / "record.json").read_text())
        assert rec["sweep"]["trial"] == t.number and rec["sweep"]["state"] == t.state.name.lower()
        assert rec["status"] == {"COMPLETE": "finished", "PRUNED": "pruned"}[t.state.name]


@pytest.mark.e2e
def test_sweep_runs_then_resumes_to_the_new_total(tmp_path):
    runs = tmp_path / "runs"
    args = [str(sweep_file(tmp_path)), *SWEEP_OVERRIDES, f"paths.runs_dir={runs}"]
    out = run_cli(args, cwd=tmp_path, module="sft_lab.sweep")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "best trial" in out.stdout
    storage = f"sqlite:///{runs}/optuna.db"
    assert_exact(study_trials(storage), 4, runs)
    out = run_cli([*args, "--n-trials", "6"], cwd=tmp_path, module="sft_lab.sweep")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 trials queued" in out.stderr
    assert_exact(study_trials(storage), 6, runs)


@pytest.fixture(scope="session")
def postgres_url():
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(initdb[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="sft-lab-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_postgres, bindir / "initdb", "-D", root / "data", "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", root / "data", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-l", root / "log", "-w", "start"],
                   check=True, capture_output=True)
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", root / "data", "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["sqlite", "journal", "postgresql"])
def test_three_workers_share_one_study_exactly(backend, tmp_path, request):
    runs = tmp_path / "runs"
    storage = {"sqlite": f"sqlite:///{tmp_path}/study.db", "journal": f"journal:{tmp_path}/study.log"}.get(backend)
    if backend == "postgresql":
        storage = request.getfixturevalue("postgres_url")
    name = f"lr_{backend}_{os.getpid()}"
    out = run_cli([str(sweep_file(tmp_path, n_trials=4)), *SWEEP_OVERRIDES, f"paths.runs_dir={runs}", "--workers", "3",
                   "--storage", storage, "--study-name", name], cwd=tmp_path, module="sft_lab.sweep")
    assert out.returncode == 0, out.stderr[-3000:]
    trials = study_trials(storage.replace("postgresql://", "postgresql+psycopg2://"), name)
    assert_exact(trials, 4, runs)
    pids = {json.loads((Path(t.user_attrs["run_dir_seed0"]) / "record.json").read_text())["env"]["pid"] for t in trials}
    assert len(pids) >= 2  # the work really was shared between processes


@pytest.mark.e2e
def test_killed_worker_loses_nothing(tmp_path):
    runs = tmp_path / "runs"
    args = [str(sweep_file(tmp_path, n_trials=2, pruner={"type": "none"}, heartbeat_s=1, grace_s=4)), *SWEEP_OVERRIDES,
            "train.max_steps=30",
            "train.save_steps=3", f"paths.runs_dir={runs}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kill_after_first_checkpoint("sft_lab.sweep", args, runs, tmp_path, env)
    out = subprocess.run([sys.executable, "-m", "sft_lab.sweep", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    from optuna.trial import TrialState

    trials = study_trials(f"sqlite:///{runs}/optuna.db")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == 2 and len(failed) == 1  # the killed trial failed, and its retry completed
    retry = next(t for t in complete if t.system_attrs.get("failed_trial") == failed[0].number)
    rec = json.loads((Path(retry.user_attrs["run_dir_seed0"]) / "record.json").read_text())
    assert rec["status"] == "finished" and "checkpoint-" in rec["train"]["resumed_from"]  # resumed, not restarted


@pytest.mark.e2e
def test_submitit_local_workers(tmp_path):
    runs = tmp_path / "runs"
    spec = sweep_file(tmp_path, n_trials=3)
    storage = f"sqlite:///{tmp_path}/study.db"
    out = run_cli([str(spec), "--workers", "0", "--storage", storage, *SWEEP_OVERRIDES, f"paths.runs_dir={runs}"],
                  cwd=tmp_path, module="sft_lab.sweep")
    assert out.returncode == 0, out.stderr[-3000:]
    overrides = ",".join(f'"{o}"' for o in [*SWEEP_OVERRIDES, f"paths.runs_dir={runs}"])
    out = run_cli(["-m", f"sweep_file={spec}", f"storage={storage}", "worker=0,1", "threads=1",
                   f"logs_dir={tmp_path}/logs", f"overrides=[{overrides}]"], cwd=tmp_path, module="sft_lab.sweep.worker")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_exact(study_trials(storage), 3, runs)
    assert len(list((tmp_path / "logs").glob("*/worker*/sweep_worker.log"))) == 2


@pytest.mark.parametrize("change, message", [
    ({"space": {"lora.rank": {"type": "categorical", "choices": [4, 8]}}}, "space.lora.rank"),
    pytest.param({"objective": {"metrics": ["arc_easy.acc"], "direction": "maximize"}}, "arc_easy.acc",
                 marks=pytest.mark.slow),
    pytest.param({"storage": "postgresql://postgres@127.0.0.1:1/nope"}, "127.0.0.1:1", marks=pytest.mark.slow),
    pytest.param({"sampler": {"type": "bayes"}}, "sampler.type='bayes'", marks=pytest.mark.slow),
    pytest.param({"heartbeat_s": 60}, "heartbeat_s=60 must be at least 1 and below grace_s=60", marks=pytest.mark.slow),
])
def test_bad_sweep_fails_before_any_trial(change, message, tmp_path):
    runs = tmp_path / "runs"
    out = run_cli([str(sweep_file(tmp_path, **change)), *SWEEP_OVERRIDES, f"paths.runs_dir={runs}"], cwd=tmp_path,
                  module="sft_lab.sweep")
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert not list(runs.glob("*/record.json"))


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "sweeps").glob("*.yaml") if not p.name.startswith("ablate_")),
                         ids=lambda p: p.name)
def test_shipped_sweeps_load_and_check(path):
    spec = load_spec(str(path))
    assert path.read_text().startswith(f"# python -m sft_lab.sweep sweeps/{path.name}")
    check(spec, [])
    from sft_lab.sweep.spec import make_pruner, make_sampler

    make_sampler(spec), make_pruner(spec)


@pytest.mark.e2e
def test_drivers_started_together_on_a_fresh_postgres_database(postgres_url, tmp_path):
    """The README's one-per-machine pattern: three sweep processes start at once on an empty database."""
    import psycopg2

    fresh = f"fresh_{os.getpid()}"
    conn = psycopg2.connect(postgres_url.replace("postgresql://", "postgresql://", 1))
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {fresh}")
    conn.close()
    storage = postgres_url.rsplit("/", 1)[0] + f"/{fresh}"
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sft_lab.sweep", str(sweep_file(tmp_path, n_trials=3)), *SWEEP_OVERRIDES,
           f"paths.runs_dir={runs}", "--storage", storage, "--study-name", "together"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outs]
    assert_exact(study_trials(storage.replace("postgresql://", "postgresql+psycopg2://"), "together"), 3, runs)


def test_workers_are_pinned_one_gpu_each_and_share_cores_without_gpus():
    from sft_lab.sweep.cli import worker_layout
    from sft_lab.sweep.spec import SweepError

    assert worker_layout(4, ["4", "5", "6", "7"], 16) == [
        {"threads": "4", "CUDA_VISIBLE_DEVICES": g} for g in ("4", "5", "6", "7")]
    assert worker_layout(2, [], 2) == [{"threads": "1"}, {"threads": "1"}]  # CPU: as before
    with pytest.raises(SweepError, match="one worker per GPU"):
        worker_layout(3, ["0", "1"], 16)
    # two GPUs per trial: worker i gets the i-th pair
    assert [w["CUDA_VISIBLE_DEVICES"] for w in worker_layout(2, ["4", "5", "6", "7"], 16, per_trial=2)] == ["4,5", "6,7"]
    with pytest.raises(SweepError, match="needs 6 GPUs; 4 visible"):
        worker_layout(3, ["4", "5", "6", "7"], 16, per_trial=2)


def test_gpus_per_trial_runs_torchrun_on_gpus_and_in_process_on_cpu(tmp_path):
    from sft_lab.sweep.cli import procs_per_trial
    from sft_lab.sweep.spec import SweepError

    pruned = load_spec(sweep_file(tmp_path))
    unpruned = load_spec(sweep_file(tmp_path, pruner={"type": "none"}))
    assert procs_per_trial(2, ["0", "1"], unpruned) == 2
    assert procs_per_trial(2, [], unpruned) == 1  # CPU: as before, in the worker's process
    assert procs_per_trial(1, ["0"], pruned) == 1
    with pytest.raises(SweepError, match="pruner"):  # its held-out losses would not reach the pruner
        procs_per_trial(2, ["0", "1"], pruned)
    with pytest.raises(SweepError, match="at least 1"):
        procs_per_trial(0, [], pruned)


@pytest.mark.e2e
def test_a_multi_gpu_trial_is_one_torchrun_job(tmp_path, monkeypatch):
    """The --gpus-per-trial K path, run here on CPU through gloo: the trial's run is torchrun over 2 processes."""
    from optuna.trial import TrialState

    from sft_lab.sweep.queue import open_storage, open_study, top_up
    from sft_lab.sweep.trial import worker

    runs = tmp_path / "runs"
    spec = load_spec(sweep_file(tmp_path, n_trials=1, pruner={"type": "none"}))
    extra = [*SWEEP_OVERRIDES, f"paths.runs_dir={runs}"]
    check(spec, extra)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    top_up(open_study(open_storage(storage), "lr", spec), spec, 1)
    monkeypatch.chdir(tmp_path)
    assert worker(spec, storage, "lr", extra, procs=2) == 1
    (trial,) = study_trials(storage)
    assert trial.state == TrialState.COMPLETE
    record = json.loads((Path(trial.user_attrs["run_dir_seed0"]) / "record.json").read_text())
    assert record["env"]["world_size"] == 2 and record["status"] == "finished"
    assert record["sweep"] == {"study": "lr", "trial": 0, "state": "complete"}
    assert trial.value == pytest.approx(record["eval"]["heldout"]["loss"]["value"])


def test_a_sweep_under_torchrun_is_refused(tmp_path, capsys, monkeypatch):
    from sft_lab.sweep.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text("study_name: x\nspace: {lr: {type: float, low: 1.0e-5, high: 1.0e-3}}\n")
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in each rank
    assert main([str(spec), "--workers", "2"]) == 2
    assert "under torchrun" in capsys.readouterr().err
