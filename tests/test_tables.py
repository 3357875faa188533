"""Ablation tables from real finished runs of the tiny model (a 2x2 grid, 2 seeds)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_cli

pytestmark = pytest.mark.e2e

TABLE = [sys.executable, str(ROOT / "analysis" / "ablation_table.py")]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("grid") / "runs"
    out = run_cli(["-m", "data=alpaca,dolly", "lr=1e-4,3e-3", "seed=0,1", *TINY, "eval.tasks=[arc_easy,heldout]",
                   "eval.limit=16", f"paths.runs_dir={runs}"], cwd=runs.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return runs


def table(*args, cwd=ROOT):
    return subprocess.run([*TABLE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def records(runs):
    return [json.loads(p.read_text()) for p in runs.glob("*/record.json")]


def test_markdown_table_matches_the_records(grid):
    out = table(grid, "--rows", "data,lr", "--ref", "data=alpaca,lr=0.0001")
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| data | lr | arc_easy/acc | heldout/bits_per_byte | Average | cost |")
    assert lines[2].startswith("| *base model* |")  # the base row comes first
    body = [l for l in lines[3:] if l.startswith("| ") and not l.startswith("| min. detectable")]
    assert len(body) == 4 and all("(n=2" in l for l in body)
    assert any(l.startswith("| min. detectable Δ |") for l in lines)  # the power row
    # held-out items differ between data rows: shown, never bolded, tested or given a Δ
    heldout = [l.split("|")[4] for l in body]
    assert not any("**" in c or "†" in c or "Δ" in c for c in heldout)
    assert any("Not compared" in l and "heldout/bits_per_byte" in l for l in lines)
    # a cell is the mean of its two seeds' records
    recs = [r for r in records(grid) if not r["config"].get("baseline")
            and r["config"]["data"]["name"] == "dolly" and r["config"]["lr"] == 3e-3]
    assert len(recs) == 2
    mean = sum(r["eval"]["arc_easy"]["acc"]["value"] for r in recs) / 2
    dolly_row = next(l for l in body if l.startswith("| dolly | 0.003 |"))
    assert f"{mean:.3f}" in dolly_row.split("|")[3]
    assert "Δ" in dolly_row and "(ref)" in next(l for l in body if l.startswith("| alpaca (ref) | 0.0001 |"))
    assert any("Holm" in l for l in lines) and any("Base" in l or "base model" in l for l in lines)
    # the base model was evaluated once and cached as a baseline record
    assert sum(bool(r["config"].get("baseline")) for r in records(grid)) == 1
    again = table(grid, "--rows", "data,lr")
    assert again.returncode == 0 and "evaluating the base model" not in again.stderr


def test_protocol_guard_refuses_mixed_protocols(grid, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(grid, runs)
    out = run_cli([*TINY, "eval.tasks=[arc_easy,heldout]", "eval.limit=12", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    out = table(runs, "--rows", "data", "--no-base")
    assert out.returncode == 2 and "limit" in out.stderr and "12" in out.stderr
    out = table(runs, "--rows", "data", "--no-base", "--allow-mixed-protocols")
    assert out.returncode == 0 and "WARNING: mixed eval protocols" in out.stdout


@pytest.mark.parametrize("fmt, marker", [("md", "| data |"), ("csv", "data,"), ("latex", r"\toprule"),
                                         ("html", '<table class="ablation">')])
def test_every_format_writes(grid, tmp_path, fmt, marker):
    out_file = tmp_path / f"table.{fmt}"
    out = table(grid, "--rows", "data", "--format", fmt, "--out", out_file)
    assert out.returncode == 0, out.stderr
    assert marker in out_file.read_text()


@pytest.mark.parametrize("kind, rows, labels", [("heatmap", "data,lr", [">lr<", ">0.003<"]),
                                                 ("heatmap", "data", [">dolly<", "arc_easy"]),
                                                 ("bars", "data", [">base model<", ">alpaca<", "arc_easy"])])
def test_plots_write_labelled_figures(grid, tmp_path, kind, rows, labels):
    svg = tmp_path / f"{kind}.svg"
    out = table(grid, "--rows", rows, "--plot", kind, "--out", svg)
    assert out.returncode == 0, out.stderr
    assert all(label in svg.read_text() for label in labels)
    png = tmp_path / f"{kind}.png"
    assert table(grid, "--rows", rows, "--plot", kind, "--out", png).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scatter_without_a_shared_heldout_set_says_why(grid, tmp_path):
    out = table(grid, "--rows", "data", "--plot", "scatter", "--out", tmp_path / "s.png")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "heldout" in out.stderr


def test_main_effects(grid):
    out = subprocess.run([sys.executable, str(ROOT / "analysis" / "main_effects.py"), str(grid), "--factors", "data,lr",
                          "--metric", "arc_easy/acc"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "data" in out.stdout and "dolly" in out.stdout and "0.003" in out.stdout


def test_unknown_row_key_is_named(grid):
    out = table(grid, "--rows", "dataset", "--no-base")
    assert out.returncode == 2 and "dataset" in out.stderr


def test_pooled_factors_show_in_every_cell(grid):
    out = table(grid, "--rows", "data", "--no-base")
    assert out.returncode == 0, out.stderr
    body = [l for l in out.stdout.splitlines() if l.startswith(("| alpaca", "| dolly"))]
    assert len(body) == 2 and all("(n=4: seed×lr" in l for l in body)
    assert "Rows pool over: lr" in out.stdout


def test_heatmap_with_three_row_keys_is_a_clear_error_and_latex_is_a_float(grid, tmp_path):
    out = table(grid, "--rows", "data,lr,seed", "--plot", "heatmap", "--out", tmp_path / "h.png", "--no-base")
    assert out.returncode == 2 and "one or two --rows keys" in out.stderr and "Traceback" not in out.stderr
    out = table(grid, "--rows", "data", "--format", "latex", "--no-base")
    assert out.returncode == 0, out.stderr
    assert r"\begin{table}" in out.stdout and r"\caption{" in out.stdout
    assert not any(line.startswith("%") for line in out.stdout.splitlines())  # the legend is the caption
