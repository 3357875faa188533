"""The table's Δ, its interval and its † on synthetic run folders with known per-item answers (no training)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from sft_lab.analysis import render
from sft_lab.analysis import table as tbl

PROTOCOL = json.dumps({"limit": 200, "n_shot": {"arc_easy": 0}})


def write_run(folder, answers, **config) -> dict:
    (folder / "samples").mkdir(parents=True)
    (folder / "samples" / "arc_easy.jsonl").write_text("\n".join(
        json.dumps({"doc_id": i, "doc_hash": f"h{i}", "prompt_hash": f"p{i}", "acc": float(a)})
        for i, a in enumerate(answers)))
    return {"run_dir": str(folder), "eval/arc_easy/acc": float(np.mean(answers)), "protocol": PROTOCOL,
            "train.tokens_seen": 1000.0, "train.wall_s": 10.0, "baseline": False, **config}


@pytest.fixture
def frames(tmp_path):
    """Two models, each with a base run; data a/b × 3 seeds on each. Data b is about 0.2 better on model m1 only."""
    rng = np.random.default_rng(0)
    runs, bases = [], []
    for model in ("m1", "m2"):
        truth = rng.random(200) < 0.5
        bases.append(write_run(tmp_path / f"base-{model}", truth, model=model, data=None, seed=0, baseline=True))
        for data, gain in (("a", 0.0), ("b", 0.4 if model == "m1" else 0.0)):
            for seed in range(3):
                flip = rng.random(200) < 0.1  # seeds disagree on ~10% of items
                right = np.where(flip, ~truth, truth) | (rng.random(200) < gain)
                runs.append(write_run(tmp_path / f"{model}-{data}-{seed}", right, model=model, data=data, seed=seed))
    return pd.DataFrame(runs), pd.DataFrame(bases)


def cells(t: tbl.Table, col="arc_easy/acc") -> dict:
    return {" / ".join(map(str, r.labels)): r.cells[col] for r in t.rows}


def test_one_base_row_per_model_and_each_row_compared_within_its_model(frames):
    runs, base = frames
    t = tbl.build(runs, ["model", "data"], ref="base", base=base)
    c = cells(t)
    assert [r.labels[0] for r in t.rows if r.is_base] == ["base model (m1)", "base model (m2)"]
    assert c["base model (m1) / "].mean == pytest.approx(base["eval/arc_easy/acc"].iloc[0])
    m1b = runs[(runs.model == "m1") & (runs.data == "b")]["eval/arc_easy/acc"].mean()
    assert c["m1 / b"].delta == pytest.approx(m1b - base["eval/arc_easy/acc"].iloc[0])  # its own model's base
    assert c["m1 / b"].p < 0.05 and c["m2 / b"].p > 0.05
    assert c["m1 / b"].delta - c["m1 / b"].delta_half > 0  # the interval excludes 0 where † is given


def test_delta_and_its_interval_are_against_the_dagger_reference_in_every_format(frames):
    runs, _ = frames
    runs = runs[runs.model == "m1"]
    t = tbl.build(runs, ["data"], ref={"data": "a"})
    c = cells(t)
    a = runs[runs.data == "a"]["eval/arc_easy/acc"].mean()
    b = runs[runs.data == "b"]["eval/arc_easy/acc"].mean()
    assert c["b"].delta == pytest.approx(b - a) and c["a"].delta is None  # Δ against the ref row, not a base
    assert c["b"].delta_half > 0 and c["b"].p < 0.05
    text = f"Δ {c['b'].delta:+.3f} ± {c['b'].delta_half:.3f}"
    assert text in render.to_markdown(t) and text in render.to_html(t)
    assert text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$") in render.to_latex(t)
    csv = pd.read_csv(__import__("io").StringIO(render.to_csv(t)))
    assert csv["arc_easy/acc_delta_ci"].iloc[1] == pytest.approx(c["b"].delta_half)
    assert "reference row (data=a)" in render.to_markdown(t) and "overlapping cell intervals are not the test" in render.to_markdown(t)


def test_power_row_states_the_comparison_it_is_for(frames):
    runs, base = frames
    m1 = runs[runs.model == "m1"]
    against_base = tbl.build(m1, ["data"], ref="base", base=base.iloc[[0]])
    against_row = tbl.build(m1, ["data"], ref={"data": "a"})
    assert "vs base" in against_base.power["arc_easy/acc"] and "df 4" in against_base.power["arc_easy/acc"]
    assert "vs n=3" in against_row.power["arc_easy/acc"]
    mde = lambda t: float(t.power["arc_easy/acc"].split()[0])  # noqa: E731
    assert mde(against_row) > mde(against_base)  # a trained reference has seeds of its own: harder


def test_identical_seeds_are_not_tested_and_the_legend_says_why(tmp_path):
    answers = (np.arange(60) % 3 == 0)
    runs = pd.DataFrame([write_run(tmp_path / f"r{s}", answers, model="m", data="a", seed=s) for s in range(3)])
    base = pd.DataFrame([write_run(tmp_path / "base", np.roll(answers, 1), model="m", data=None, seed=0,
                                   baseline=True)])
    t = tbl.build(runs, ["data"], ref="base", base=base)
    cell = cells(t)["a"]
    assert cell.p is None and cell.untested == "no variance" and render.cell_text(cell).endswith("°")
    assert any("seed variance is 0" in line for line in t.legend)
    assert t.power["arc_easy/acc"] == "– (no seed variance)"
    assert not math.isnan(cell.mean)
