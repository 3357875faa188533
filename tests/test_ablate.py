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
from conftest import ROOT, TINY, run_cli

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
                   f"paths.runs_dir={runs}"], ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    train = record(only_run(runs))["train"]
    budget = train["token_budget"]
    assert budget["max_tokens"] == 1000 and budget["data_ran_out"]
    per_step_max = 16 * 4  # batch 16, at most a few answer tokens each
    assert 1000 <= train["answer_tokens"] < 1000 + per_step_max
    assert train["epochs"] > 1  # 200 examples hold fewer answer tokens than the budget
    assert "the data runs out first" in out.stderr


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


def trials_of(runs: Path, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=f"sqlite:///{runs / 'optuna.db'}").get_trials(deepcopy=False)


@pytest.mark.e2e
def test_ablate_reports_the_tuned_ranking_where_a_shared_learning_rate_ranks_the_other_way(tmp_path):
    """sweeps/ablate_toy.yaml: two model widths, the learning rate tuned per arm on dev items."""
    runs = tmp_path / "runs"
    out = run_cli(["sweeps/ablate_toy.yaml", f"paths.runs_dir={runs}"], ROOT, timeout=2400, module="sft_lab.ablate")
    assert out.returncode == 0, out.stderr[-3000:]
    from sft_lab.ablate.spec import arm_overrides, load_spec

    spec = load_spec(str(ROOT / "sweeps/ablate_toy.yaml"))
    labels = [label for label, _ in arm_overrides(spec)]
    dev = {label: {t.params["lr"]: t.value for t in trials_of(runs, f"ablate_toy/{label}")} for label in labels}
    a, b = labels
    tuned = {label: max(dev[label], key=dev[label].get) for label in labels}
    tuned_winner = max(labels, key=lambda label: dev[label][tuned[label]])
    shared_winners = {lr: max(labels, key=lambda label: dev[label][lr]) for lr in dev[a]}
    # the case built on purpose: at some shared learning rate the other arm wins
    assert any(w != tuned_winner for lr, w in shared_winners.items() if dev[a][lr] != dev[b][lr]), (dev, tuned)
    folder = runs / "ablate" / "ablate_toy"
    report = (folder / "ablation.md").read_text()
    # the final runs replicate each arm's tuned learning rate, with fresh seeds, on test items
    finals = json.loads((folder / "arms.json").read_text())
    for arm in finals:
        assert arm["best"]["lr"] == tuned[arm["label"]]
        assert len(arm["final_dirs"]) == len(spec.seeds)
        for d in arm["final_dirs"]:
            r = record(Path(d))
            assert r["config"]["lr"] == tuned[arm["label"]] and r["config"]["seed"] in spec.seeds
            assert r["config"]["eval"]["split"] == "test" and r["sweep"]["tuned_on"] == "dev"
    # the report ranks the arms as their tuning did, and shows the tuned values, the split and the curves
    tuned_rows = [line for line in report.splitlines() if line.startswith("| ") and "trials" not in line][:2]
    assert tuned_winner in max(tuned_rows, key=lambda line: float(line.split("|")[-3]))
    for text in ("**dev** items", "**test** items", "Tuning curves", "Learning curves", "Items: the test split"):
        assert text in report
    assert (folder / "tuning_curves.svg").is_file() and (folder / "learning_curves.svg").is_file()


ABLATION_TINY = {
    "study_name": "tiny", "arms": {"lora.r": [4, 8]}, "tune": {"lr": {"type": "categorical", "choices": [1e-4, 1e-3]}},
    "trials": 2, "sampler": {"type": "grid"}, "pruner": {"type": "none"}, "tuning_seeds": [0], "seeds": [1],
    "objective": {"metrics": ["toy_first.acc"], "direction": "maximize"}, "heartbeat_s": 1, "grace_s": 3,
    "fixed": [a for a in TINY if not a.startswith(("eval.tasks", "train.max_steps", "eval.limit"))]
    + ["data=toy_first", "template=plain", "eval.tasks=[toy_first]", "train.max_steps=12", "train.save_steps=2"],
}


@pytest.mark.e2e
def test_a_killed_ablation_resumes_without_losing_or_repeating_a_trial_or_a_final_seed(tmp_path):
    runs = tmp_path / "runs"
    path = tmp_path / "ablation.yaml"
    path.write_text(json.dumps(ABLATION_TINY))
    args = [str(path), f"paths.runs_dir={runs}", "--no-base"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sft_lab.ablate", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list(runs.glob("*/checkpoints/checkpoint-*/sft_lab_counts.json")):
        assert proc.poll() is None, "the ablation ended before it was killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    out = run_cli(args, ROOT, timeout=1200, module="sft_lab.ablate")
    assert out.returncode == 0, out.stderr[-3000:]
    from optuna.trial import TrialState

    for label in ("lora.r=4", "lora.r=8"):
        trials = trials_of(runs, f"tiny/{label}")
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        assert sorted(t.params["lr"] for t in done) == [1e-4, 1e-3], [(t.number, t.state.name, t.params) for t in trials]
        dirs = [t.user_attrs["run_dir_seed0"] for t in done]
        assert len(set(dirs)) == len(dirs)
    records = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    finals = [r for r in records if (r.get("sweep") or {}).get("role") == "final"]
    assert sorted(r["sweep"]["arm"] for r in finals) == ["lora.r=4", "lora.r=8"]  # one final seed each, once
    assert all(r["status"] == "finished" for r in records)
    assert len(records) == 4 + 2  # 2 arms x 2 trials, 2 arms x 1 final seed: nothing ran twice
