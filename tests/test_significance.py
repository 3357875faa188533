"""Is the difference real? The statistics on real runs of the learnable toy setting (model=tiny).

8 runs of toy_first that differ only in the seed (A/A), 3 of toy_last (a known effect), and a
user's own lm-eval task folder through eval.include_path.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from sft_lab.analysis.calibration import aa_independent, aa_rates
from sft_lab.analysis.collect import collect
from sft_lab.analysis.table import Items

pytestmark = pytest.mark.e2e
TABLE = [sys.executable, str(ROOT / "analysis" / "ablation_table.py")]
AA_SEEDS = 8  # docs/statistics.md's 16-seed A/A: python -m benchmarks.stats.aa_independent


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory) -> Path:
    # SFT_LAB_TEST_TOY_RUNS: a folder kept between test sessions (finished runs are reused, so it resumes)
    runs = Path(os.environ["SFT_LAB_TEST_TOY_RUNS"]) if os.environ.get("SFT_LAB_TEST_TOY_RUNS") else (
        tmp_path_factory.mktemp("toy") / "runs")
    for grid in (["data=toy_first", f"seed={','.join(map(str, range(AA_SEEDS)))}"], ["data=toy_last", "seed=0,1,2"]):
        out = run_cli(["-m", "+experiment=toy", *grid, f"paths.runs_dir={runs}"], cwd=runs.parent, timeout=1800)
        assert out.returncode == 0, out.stderr[-3000:]
    return runs


def table(*args):
    return subprocess.run([*TABLE, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_the_toy_setting_learns_and_training_on_x_moves_x(toy_runs):
    df, _ = collect(toy_runs)
    first, last = df[df["data"] == "toy_first"], df[df["data"] == "toy_last"]
    assert len(first) == AA_SEEDS and len(last) == 3
    assert (first["eval/toy_first/acc"] > 0.4).all() and (last["eval/toy_last/acc"] > 0.4).all()  # chance: 0.25
    assert first["eval/toy_first/acc"].mean() - last["eval/toy_first/acc"].mean() > 0.3
    assert last["eval/toy_last/acc"].mean() - first["eval/toy_last/acc"].mean() > 0.3
    rec = json.loads(Path(first["run_dir"].iloc[0], "record.json").read_text())
    assert rec["train"]["final_loss"] < rec["train"]["first_loss"] / 5
    assert rec["train"]["wall_s"] < 120


def test_aa_identical_configs_are_flagged_at_most_7_percent(toy_runs):
    df, _ = collect(toy_runs)
    dirs = df[df["data"] == "toy_first"].sort_values("seed")["run_dir"].tolist()
    columns = ["toy_first/acc", "heldout/bits_per_byte"]
    items = Items()
    report = {}
    for col in columns:
        keys = items.shared_keys(dirs, col)
        assert keys, f"{col}: the {AA_SEEDS} runs do not share their items"
        report[col] = aa_rates(items.matrix(dirs, col, keys), splits=200, per_arm=4)
        report[col]["independent"] = aa_independent(items.matrix(dirs, col, keys), per_arm=2)
    print(json.dumps(report, indent=1))
    acc = report["toy_first/acc"]
    assert acc["item_disagreement"] > 0.2 and acc["between_seed_sd"] > 0  # seeds really differ
    for col, r in report.items():
        assert r["rate_seeds_items"] <= 0.07, (col, r)
        assert r["independent"]["comparisons"] == AA_SEEDS // 4 and r["independent"]["flagged"] <= 1, (col, r)


def test_known_effect_is_marked_in_the_right_direction(toy_runs):
    out = table(toy_runs, "--rows", "data", "--ref", "data=toy_first")
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    lines = out.stdout.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(l for l in lines if l.startswith("| toy_last |"))
    cells = dict(zip(header, [c.strip() for c in row.strip("|").split("|")]))
    assert cells["toy_last/acc"].endswith("†") and cells["toy_first/acc"].endswith("†")
    ref = dict(zip(header, [c.strip() for c in next(l for l in lines if l.startswith("| toy_first (ref)"))
                            .strip("|").split("|")]))
    value = lambda text: float(text.strip("*").split()[0].strip("*"))  # noqa: E731
    assert value(cells["toy_last/acc"]) > value(ref["toy_last/acc"])
    assert value(cells["toy_first/acc"]) < value(ref["toy_first/acc"])
    # the held-out column is each run's own split: shown, never compared
    assert "†" not in cells["heldout/bits_per_byte"] and "Not compared" in out.stdout
    assert "min. detectable Δ" in out.stdout


def test_one_seed_per_row_claims_nothing(toy_runs):
    out = table(toy_runs, "--rows", "data", "--ref", "data=toy_first", "--filter", "seed=0")
    assert out.returncode == 0, out.stderr
    body = [l for l in out.stdout.splitlines() if l.startswith("| toy_last |")][0]
    assert "†" not in body and "°" in body
    assert "seed variance was not measured" in out.stdout
    assert "(n=1, items only" in out.stdout


def test_a_users_own_task_folder_flows_into_record_and_table(tmp_path, data_dir):
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "my_arc.yaml").write_text(textwrap.dedent(f"""\
        task: my_arc
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {json.dumps(str(data_dir / "eval" / "arc_easy_test.jsonl"))}}}}}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "Q: {{{{question.stem}}}}\\nA:"
        doc_to_choice: "{{{{question.choices | map(attribute='text') | list}}}}"
        doc_to_target: "{{{{ (question.choices | map(attribute='label') | list).index(answerKey) }}}}"
        metric_list:
          - {{metric: acc, aggregation: mean, higher_is_better: true}}
        metadata: {{version: 2.0}}
        """))
    runs = tmp_path / "runs"
    out = run_cli(["+experiment=toy", "train.max_steps=10", f"eval.include_path={tasks}",
                   "eval.tasks=[my_arc,toy_first]", "eval.limit=20", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    assert all(r["config"]["eval"]["include_path"] == str(tasks) for r in recs)
    assert all(r["eval_protocol"]["task_versions"]["my_arc"] == 2.0 for r in recs)
    assert all((Path(r["run_dir"]) / "samples" / "my_arc.jsonl").is_file() for r in recs)
    out = table(runs, "--rows", "data")
    assert out.returncode == 0, out.stderr  # the base model is evaluated with the user's folder too
    assert "my_arc/acc" in out.stdout and "*base model*" in out.stdout


def test_power_planner_answers_from_the_pilot_runs(toy_runs):
    out = subprocess.run([sys.executable, str(ROOT / "analysis" / "plan.py"), str(toy_runs), "--metric",
                          "toy_first/acc", "--effect", "0.05"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["pilot"]["configs"] == 2 and result["pilot"]["runs"] == AA_SEEDS + 3
    assert result["pilot"]["seed"] > 0 and result["pilot"]["residual"] > 0
    fewest = [v if v is not None else 10**6 for v in result["fewest_seeds"].values()]  # by item count, ascending
    assert fewest == sorted(fewest, reverse=True)  # more items never need more seeds
    bad = subprocess.run([sys.executable, str(ROOT / "analysis" / "plan.py"), str(toy_runs), "--metric", "nope/acc",
                          "--effect", "0.05"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "toy_first/acc" in bad.stderr
