"""Figures by their content: labels, legends, CIs and marks, read from the matplotlib artists and the SVG."""

from __future__ import annotations

import math

import pytest

from sft_lab.analysis import plots
from sft_lab.analysis.table import Cell, Row, Table


def study_table() -> Table:
    """Two trained rows (3 seeds) and the base row; a benchmark, two held-out sets and the Average."""
    cols = ["arc_easy/acc", "heldout_alpaca/bits_per_byte", "heldout_dolly/bits_per_byte", "Average"]
    base = Row(("base model",), {c: Cell(v, h, 1, "items") for c, v, h in
                                 zip(cols, [0.5, 1.20, 1.10, 0.5], [0.10, 0.05, 0.05, 0.10])}, is_base=True)

    def trained(name, values, deltas, ps):
        return Row((name,), {c: Cell(v, 0.04, 3, delta=d, delta_half=0.02, p=p)
                             for c, v, d, p in zip(cols, values, deltas, ps)},
                   cost="10k tok, 60 s")

    rows = [base, trained("alpaca", [0.51, 1.00, 1.08, 0.51], [0.01, -0.20, -0.02, 0.01], [0.9, 0.001, 0.4, 0.9]),
            trained("dolly", [0.49, 1.15, 0.90, 0.49], [-0.01, -0.05, -0.20, -0.01], [0.9, 0.2, 0.002, 0.9])]
    return Table(["data"], cols, rows, ["legend"])


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_transfer_heatmap_shows_deltas_with_marks_and_labelled_axes(tmp_path):
    fig = plots.heatmap(study_table(), str(tmp_path / "t.svg"),
                        columns=["heldout_alpaca/bits_per_byte", "heldout_dolly/bits_per_byte"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["alpaca", "dolly"]  # the base row is the zero point
    assert ax.get_xlabel() and ax.get_ylabel() == "data"
    cells = texts(fig)
    assert "-0.200†\n±0.020" in cells and "-0.020\n±0.020" in cells  # Δ vs base, † only where p < 0.05
    assert "Δ" in fig.axes[1].get_ylabel()  # the colour bar says what the colour is
    svg = (tmp_path / "t.svg").read_text()
    assert "heldout_alpaca" in svg and "-0.200†" in svg


def test_heatmap_of_two_row_keys_and_a_clear_error_for_three(tmp_path):
    t = study_table()
    t.row_keys = ["data", "lr"]
    for r, lr in zip(t.rows, ["", "0.0001", "0.0002"]):
        r.labels = (r.labels[0], lr)
    fig = plots.heatmap(t, str(tmp_path / "h.png"))
    assert fig.axes[0].get_xlabel() == "data" and fig.axes[0].get_ylabel() == "lr"
    t.row_keys = ["a", "b", "c"]
    with pytest.raises(ValueError, match="one or two --rows keys"):
        plots.heatmap(t, str(tmp_path / "x.png"))


def test_bars_show_every_benchmark_with_ci_whiskers_and_a_legend(tmp_path):
    t = study_table()
    t.rows[1].cells["arc_easy/acc"].half = None  # a row without a CI says so
    fig = plots.bars(t, str(tmp_path / "b.png"))
    ax = fig.axes[0]
    assert [x.get_text() for x in ax.get_legend().get_texts()] == ["base model", "alpaca", "dolly"]
    assert [x.get_text() for x in ax.get_xticklabels()] == ["arc_easy\n(acc)", "Average"]  # held-out sets elsewhere
    whiskers = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None]
    assert len(whiskers) == 3
    assert "without whiskers have no CI" in ax.get_title()
    assert ax.get_ylabel() and ax.get_xlabel()


def test_scatter_labels_every_point_without_an_axis_offset(tmp_path):
    fig = plots.scatter([plots.Point("alpaca", -0.2, 0.02, 10.81, 0.01), plots.Point("dolly", -0.1, 0.03, 10.83, None)],
                        str(tmp_path / "s.svg"), "x label", "y label", "title")
    ax = fig.axes[0]
    assert {"alpaca", "dolly"} <= set(texts(fig))
    assert [x.get_text() for x in ax.get_legend().get_texts()] == ["alpaca", "dolly"]
    fig.canvas.draw()
    assert ax.yaxis.get_offset_text().get_text() == ""  # no "+1.081e1"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x label", "y label")


def test_learning_vs_forgetting_from_a_table(tmp_path):
    fig = plots.learning_vs_forgetting(study_table(), str(tmp_path / "s.png"))
    ax = fig.axes[0]
    xs = sorted(round(float(l.get_xdata()[0]), 3) for l in ax.lines if len(l.get_xdata()) == 1
                and not math.isnan(float(l.get_xdata()[0])) and l.get_marker() == "o")
    assert xs == [-0.2, -0.05]  # each row's Δ on the first held-out column
    assert "Δ" in ax.get_xlabel() and "Δ" in ax.get_ylabel()
