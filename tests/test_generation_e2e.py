"""IFEval and generated answers through the whole pipeline: real tiny-model runs, tables, re-evaluation, report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_cli

pytestmark = pytest.mark.e2e

IFEVAL = ["prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"]
GEN = ["rougeL", "words", "stopped"]
SMALL = [*TINY, "train.max_steps=5", "eval.tasks=[ifeval,gen]", "eval.limit=12", "eval.max_gen_toks=24",
         "data.heldout_max=12", "eval.gen_batch_size=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("gen") / "runs"
    out = run_cli(["-m", "data=alpaca,dolly", "seed=0,1", *SMALL, f"paths.runs_dir={runs}"], cwd=runs.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return runs


def records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*/record.json"))]


def test_the_issues_command_runs_offline_and_records_every_generative_metric(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli(["model=tiny", "train.max_steps=5", "eval.tasks=[ifeval,gen]", "eval.limit=20", "tracking=none",
                   "data.examples=64", "train.max_length=128", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(runs)
    assert set(rec["eval"]["ifeval"]) == {*IFEVAL, "stopped"} and set(GEN) <= set(rec["eval"]["gen"])
    folder = Path(rec["run_dir"])
    for task, metrics in (("ifeval", IFEVAL), ("gen", GEN)):
        items = [json.loads(l) for l in (folder / "samples" / f"{task}.jsonl").read_text().splitlines()]
        assert len(items) == 20 and all(set(metrics) <= set(i) for i in items)
        gens = [json.loads(l) for l in (folder / "generations" / f"{task}.jsonl").read_text().splitlines()]
        assert len(gens) == 20 and all({"prompt", "answer", "instruction"} <= set(g) for g in gens)
        assert all(out.stdout.count(f"{task}/{m}") >= 1 for m in metrics)  # the end-of-run summary prints them
    # the prompts are the template's (alpaca), up to where the answer starts
    assert all(g["prompt"].endswith("### Response:") for g in gens)
    assert all(g["reference"] for g in gens)
    mean_stopped = sum(i["stopped"] for i in items) / 20
    assert rec["eval"]["gen"]["stopped"]["value"] == pytest.approx(mean_stopped)
    gen = rec["eval_protocol"]["generation"]["ifeval"]
    assert gen["max_gen_toks"] == 256 and gen["decoding"] == "greedy" and gen["until"] == ["<|im_end|>"]
    assert gen["template_fingerprint"] == rec["data"]["template_fingerprint"]
    # a random model rarely stops: the run says so instead of reporting a number alone
    if mean_stopped == 0:
        assert any("ran to eval.max_gen_toks=256" in w for w in rec["warnings"]) and "WARNING" in out.stdout


def table(*args):
    return subprocess.run([sys.executable, str(ROOT / "analysis" / "ablation_table.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=900)


def test_a_table_tests_the_generative_columns_over_seeds_and_items(runs):
    out = table(runs, "--rows", "data", "--ref", "base")
    assert out.returncode == 0, out.stderr[-3000:]
    head = out.stdout.splitlines()[0]
    for m in IFEVAL:
        assert f"ifeval/{m}" in head
    for m in GEN:
        assert f"gen/{m}" in head
    body = [l for l in out.stdout.splitlines() if l.startswith(("| alpaca", "| dolly"))]
    where = [c.strip() for c in head.split("|")].index("ifeval/prompt_level_strict_acc")
    ifeval_cells = [l.split("|")[where] for l in body]
    assert all("n=2" in c and "Δ" in c for c in ifeval_cells)  # tested against the base model, per seed and item
    assert "instructions followed / instructions given" in out.stdout  # the legend says how inst-level is tested
    assert "| *base model* |" in out.stdout and "Not compared" in out.stdout  # gen: each data's own held-out prompts
    base = [r for r in records(runs) if r["config"].get("baseline")]
    assert len(base) == 1 and base[0]["config"]["template"]["name"] == "alpaca"  # prompted the same way


def test_reevaluation_adds_a_task_without_training_and_twice_is_a_no_op(runs):
    before = {r["run_dir"]: r for r in records(runs)}
    args = [str(runs), "eval.tasks=[gen_alpaca]", "eval.limit=6", "eval.max_gen_toks=24", "eval.gen_batch_size=8"]
    out = run_cli(args, cwd=runs.parent, module="sft_lab.evaluate")
    assert out.returncode == 0, out.stderr[-3000:]
    after = {r["run_dir"]: r for r in records(runs)}
    for d, rec in after.items():
        old = before[d]
        assert rec["eval"]["ifeval"] == old["eval"]["ifeval"]  # what was there stays
        assert set(rec["eval"]["gen_alpaca"]) >= set(GEN)
        assert rec["eval_protocol"]["limits"]["gen_alpaca"] == 6 and rec["eval_protocol"]["limits"]["ifeval"] == 12
        assert rec.get("train") == old.get("train")  # no training
        assert (Path(d) / "generations" / "gen_alpaca.jsonl").is_file()
    again = run_cli(args, cwd=runs.parent, module="sft_lab.evaluate")
    assert again.returncode == 0 and "nothing to evaluate" in again.stdout
    assert {r["run_dir"]: r["updated"] for r in records(runs)} == {d: r["updated"] for d, r in after.items()}
    clash = run_cli([str(runs), "eval.tasks=[gen_alpaca]", "eval.limit=7"], cwd=runs.parent, module="sft_lab.evaluate")
    assert clash.returncode == 2 and "never overwritten" in clash.stderr
    bad = run_cli([str(runs), "lr=0.1"], cwd=runs.parent, module="sft_lab.evaluate")
    assert bad.returncode == 2 and "only eval.* and paths.*" in bad.stderr
    # the new column is in the table, against the same base model (re-evaluated too)
    out = table(runs, "--rows", "data", "--ref", "base")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gen_alpaca/rougeL" in out.stdout.splitlines()[0]
    row = next(l for l in out.stdout.splitlines() if l.startswith("| alpaca"))
    assert "Δ" in row.split("|")[out.stdout.splitlines()[0].split("|").index(" gen_alpaca/rougeL ")]


def test_the_report_shows_samples_side_by_side_in_a_real_browser(runs, tmp_path):
    from test_report import chromium

    browser = chromium()
    report = tmp_path / "report.html"
    out = subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"), str(runs), "--out", str(report)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'id="samples"' in dom and "Generation (IFEval and generated answers)" in dom
    samples = re.findall(r'<div class="sample" data-task="(\w+)"', dom)
    assert "ifeval" in samples and samples.count("ifeval") >= 2
    first = dom[dom.index('<div class="sample"'):]
    first = first[:first.index('<div class="sample"', 10)] if first.count('<div class="sample"') > 1 else first
    whos = re.findall(r'<div class="who">([^<]+)</div>', first)
    assert whos[0] == "base model" and any(w.startswith("alpaca") for w in whos) and any(w.startswith("dolly") for w in whos)
    # the answers shown are the runs' own generations
    base = next(r for r in records(runs) if r["config"].get("baseline"))
    gens = [json.loads(l) for l in (Path(base["run_dir"]) / "generations" / "ifeval.jsonl").read_text().splitlines()]
    import html

    assert html.escape(gens[0]["answer"][:40]) in dom
