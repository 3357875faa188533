"""The study outputs and the HTML report, from real tiny-model runs with every held-out set, in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("study") / "runs"
    out = run_cli(["-m", "data=alpaca,dolly", "seed=0,1", *TINY, "eval.tasks=[arc_easy]", "eval.heldout=all",
                   "data.heldout_max=8", f"paths.runs_dir={runs}"], cwd=runs.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return runs


def script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "analysis" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=900)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("SFT_LAB_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return found


def test_study_writes_its_tables_and_figures(runs, tmp_path):
    out = script("study.py", runs, "--out", tmp_path / "study")
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "study" / "table.md").read_text()
    assert "### Benchmarks (accuracy)" in table and "### Held-out sets (bits per byte)" in table
    assert "| heldout_alpaca/bits_per_byte | heldout_alpaca_gpt4/bits_per_byte |" in table
    assert table.count("| *base model* |") == 2 and "min. detectable Δ" in table and "base model at p < 0.05" in table
    transfer = (tmp_path / "study" / "transfer.svg").read_text()
    assert "heldout_lima" in transfer and "Δ bits per byte vs base model" in transfer
    forgetting = (tmp_path / "study" / "forgetting.svg").read_text()
    assert ">alpaca<" in forgetting and ">dolly<" in forgetting  # one labelled point per training set
    bars = (tmp_path / "study" / "benchmarks.svg").read_text()
    assert "arc_easy" in bars and "score (higher is better)" in bars and ">base model<" in bars
    # the table command's scatter: a shared held-out set gives every row a Δ from the base model
    out = script("ablation_table.py", runs, "--rows", "data", "--plot", "scatter", "--out", tmp_path / "s.svg")
    assert out.returncode == 0, out.stderr
    assert ">alpaca<" in (tmp_path / "s.svg").read_text()


def test_report_renders_in_a_real_browser(runs, tmp_path):
    browser = chromium()
    report = tmp_path / "report.html"
    out = script("report.py", runs, "--out", report)
    assert out.returncode == 0, out.stderr
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    # the DOM holds the tables' numbers: each data row's ARC-Easy mean over its two seeds
    records = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    for data in ("alpaca", "dolly"):
        accs = [r["eval"]["arc_easy"]["acc"]["value"] for r in records
                if not r["config"].get("baseline") and r["config"]["data"]["name"] == data]
        assert len(accs) == 2
        row = re.search(rf"<tr><td class=\"label\">{data}</td>(.*?)</tr>", dom)
        assert row and f"{sum(accs) / 2:.3f}" in row.group(1)
    assert "heldout_dolly/bits_per_byte" in dom and "Evaluation protocol" in dom and "†" in dom
    assert dom.count('src="data:image/svg+xml;base64,') == 3  # the figures travel inside the file
    links = re.findall(r'href="([^"]+record\.json)"', dom)
    assert len(links) == 5 and all((report.parent / link).is_file() for link in links)  # 4 runs + the base model
    # the screenshot is a rendered page, not a blank one
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    pixels = list(image.getdata())
    inked = sum(1 for p in pixels if sum(p) < 600) / len(pixels)
    assert inked > 0.02, f"only {inked:.1%} of the page is drawn"
    assert len(set(pixels)) > 100  # text, tables and the figures' colours
