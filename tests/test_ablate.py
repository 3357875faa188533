"""Tuned ablations end to end: token budgets, dev/test items, `python -m sft_lab.ablate` on the toy setting
(a ranking that per-arm tuning reverses), and a killed ablation resumed without a lost or repeated run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

TOY = ["+experiment=toy", "eval.limit=null", "tracking=none"]


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "record.json").read_text())


def only_run(runs: Path) -> Path:
    (rec,) = [p for p in runs.glob("*/record.json")]
    return rec.parent


@pytest.mark.e2e
def test_a_token_budget_stops_at_the_budget_and_says_when_the_data_ran_out(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli([*TOY, "data.examples=200", "train.max_steps=null", "train.max_tokens=1000", "eval.tasks=[toy_first]",
                   "eval.limit=20", f"paths.runs_dir={runs}"], ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    train = record(only_run(runs))["train"]
    budget = train["token_budget"]
    assert budget["max_tokens"] == 1000 and budget["data_ran_out"]
    per_step_max = 16 * 4  # batch 16, at most a few answer tokens each
    assert 1000 <= train["answer_tokens"] < 1000 + per_step_max
    assert train["epochs"] > 1  # 200 examples hold fewer answer tokens than the budget
    assert "the data runs out first" in out.stdout + out.stderr


@pytest.mark.e2e
def test_dev_and_test_items_are_disjoint_and_recorded(tmp_path):
    runs = tmp_path / "runs"
    items = {}
    for split in ("dev", "test"):
        out = run_cli([*TOY, "train.max_steps=2", "eval.tasks=[toy_first]", f"eval.split={split}",
                       f"paths.runs_dir={runs / split}"], ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        run = only_run(runs / split)
        protocol = record(run)["eval_protocol"]
        assert protocol["split"] == split and protocol["split_items"]["toy_first"] > 50
        items[split] = {json.loads(line)["doc_hash"] for line in (run / "samples" / "toy_first.jsonl").open()}
        assert len(items[split]) == protocol["split_items"]["toy_first"]
    assert not items["dev"] & items["test"]
    assert len(items["dev"]) + len(items["test"]) == 200  # the toy task's items, all of them, once


@pytest.mark.e2e
def test_the_learning_curve_measures_items_without_changing_the_training_and_survives_a_kill(tmp_path):
    from conftest import kill_after_first_checkpoint

    args = [*TOY, "train.max_steps=30", "train.save_steps=10", "train.logging_steps=1",
            "eval.tasks=[toy_first,heldout]"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    curve = ["eval.every=10", "eval.every_limit=30", f"paths.runs_dir={tmp_path / 'curve'}"]
    assert kill_after_first_checkpoint("sft_lab.run", [*args, *curve], tmp_path / "curve", ROOT, env) != 0
    out = run_cli([*args, *curve], ROOT)  # resumes from the checkpoint at step 10
    assert out.returncode == 0, out.stderr[-2000:]
    plain = run_cli([*args, f"paths.runs_dir={tmp_path / 'plain'}"], ROOT)
    assert plain.returncode == 0, plain.stderr[-2000:]
    measured, unmeasured = record(only_run(tmp_path / "curve")), record(only_run(tmp_path / "plain"))
    assert measured["attempts"] == 2 and measured["train"]["resumed_from"]
    points = measured["train"]["eval_curve"]
    assert [p["step"] for p in points] == [10, 20, 30]  # the killed attempt's points after step 10: not twice
    assert all(set(p) == {"step", "answer_tokens", "heldout/loss", "toy_first/acc"} for p in points)
    assert points[0]["answer_tokens"] < points[1]["answer_tokens"] < points[2]["answer_tokens"]
    assert points[-1]["heldout/loss"] < points[0]["heldout/loss"]
    # measuring draws nothing from the training's random streams: the same losses as a run without the curve
    losses = lambda r: [c["loss"] for c in r["train"]["loss_curve"]]  # noqa: E731
    assert losses(measured) == pytest.approx(losses(unmeasured), rel=1e-5)
    assert measured["eval"]["toy_first"]["acc"]["value"] == pytest.approx(unmeasured["eval"]["toy_first"]["acc"]["value"])
    assert unmeasured["train"]["eval_curve"] is None


def trials_of(runs: Path, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=f"sqlite:///{runs / 'optuna.db'}").get_trials(deepcopy=False)


def kill_during_the_first_trial(args: list[str], runs: Path) -> None:
    """Start `python -m sft_lab.ablate args` and kill it (-9) once its first run has a complete checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sft_lab.ablate", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list(runs.glob("*/checkpoints/checkpoint-*/sft_lab_counts.json")):
        assert proc.poll() is None, "the ablation ended before it was killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.e2e
def test_ablate_resumes_after_a_kill_and_reports_the_tuned_ranking_where_a_shared_lr_ranks_the_other_way(tmp_path):
    """sweeps/ablate_toy.yaml (two model widths, the learning rate tuned per arm on dev items), killed during
    its first trial and run again: every trial and final seed exactly once, and the tuned ranking reported."""
    import yaml
    from optuna.trial import TrialState

    from sft_lab.ablate.spec import arm_overrides, load_spec

    runs = tmp_path / "runs"
    spec_text = yaml.safe_load((ROOT / "sweeps/ablate_toy.yaml").read_text())
    path = tmp_path / "ablate_toy.yaml"
    path.write_text(yaml.safe_dump({**spec_text, "heartbeat_s": 1, "grace_s": 3, "seeds": [1], "fixed": [
        *spec_text["fixed"], "train.save_steps=10"]}))  # a killed trial is queued again within seconds; one final seed
    args = [str(path), f"paths.runs_dir={runs}"]
    kill_during_the_first_trial(args, runs)
    out = run_cli(args, ROOT, timeout=2400, module="sft_lab.ablate")
    assert out.returncode == 0, out.stderr[-3000:]

    spec = load_spec(str(path))
    labels = [label for label, _ in arm_overrides(spec)]
    dev = {}
    for label in labels:  # every grid point once, each in its own run
        trials = trials_of(runs, f"ablate_toy/{label}")
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        assert sorted(t.params["lr"] for t in done) == [2e-3, 8e-3, 3e-2], [(t.number, t.state.name) for t in trials]
        assert len({t.user_attrs["run_dir_seed0"] for t in done}) == 3
        dev[label] = {t.params["lr"]: t.value for t in done}
    records = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    assert all(r["status"] == "finished" for r in records)
    finals = [r for r in records if (r.get("sweep") or {}).get("role") == "final"]
    assert sorted((r["sweep"]["arm"], r["config"]["seed"]) for r in finals) == sorted(
        (label, s) for label in labels for s in spec.seeds)  # each final seed once
    assert len(records) == 2 * 3 + len(finals)  # nothing ran twice

    a, b = labels
    tuned = {label: max(dev[label], key=dev[label].get) for label in labels}
    tuned_winner = max(labels, key=lambda label: dev[label][tuned[label]])
    shared_winners = {lr: max(labels, key=lambda label: dev[label][lr]) for lr in dev[a]}
    # the case built on purpose: at some shared learning rate the other arm wins
    assert any(w != tuned_winner for lr, w in shared_winners.items() if dev[a][lr] != dev[b][lr]), (dev, tuned)
    for r in finals:  # each arm's tuned learning rate, fresh seeds, test items
        assert r["config"]["lr"] == tuned[r["sweep"]["arm"]] and r["sweep"]["tuned_on"] == "dev"
        assert r["config"]["eval"]["split"] == "test" and r["config"]["seed"] not in spec.tuning_seeds
    folder = runs / "ablate" / "ablate_toy"
    report = (folder / "ablation.md").read_text()
    tuned_rows = [line for line in report.splitlines() if line.startswith("| ") and "trials" not in line][:2]
    assert tuned_winner in max(tuned_rows, key=lambda line: float(line.split("|")[-3]))
    for text in ("**dev** items", "**test** items", "Every tuning trial", "Tuning curves", "Learning curves",
                 "Items: the test split", "## Cost"):
        assert text in report
    assert (folder / "tuning_curves.svg").is_file() and (folder / "learning_curves.svg").is_file()
    for r in finals:  # the learning curve (curve: in the file): held-out loss and test items every 1,000 answer tokens
        tokens = [p["answer_tokens"] for p in r["train"]["eval_curve"]]
        assert len(tokens) == 3 and all(t >= 1000 * (i + 1) for i, t in enumerate(tokens))
        assert all("toy_first/acc" in p and "heldout/loss" in p for p in r["train"]["eval_curve"])
    learning = report[report.index("## Learning curves"):report.index("## Cost")]
    assert "toy_first/acc" in learning and "heldout/loss" in learning
