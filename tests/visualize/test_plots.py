# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from monai_sacb.visualize import label_metric_boxplot, read_metric_rows

# three pairs, three structures; label 3 has no Dice in pair c (NaN: left out), label 7 has no name
ROWS = [
    {"pair": "a", "label": 1, "name": "Thalamus", "dice": 0.9, "identity_dice": 0.6},
    {"pair": "a", "label": 2, "name": "Caudate", "dice": 0.5, "identity_dice": 0.3},
    {"pair": "a", "label": 7, "name": "", "dice": 0.7, "identity_dice": 0.7},
    {"pair": "b", "label": 1, "name": "Thalamus", "dice": 0.8, "identity_dice": 0.5},
    {"pair": "b", "label": 2, "name": "Caudate", "dice": 0.6, "identity_dice": 0.4},
    {"pair": "b", "label": 7, "name": "", "dice": 0.75, "identity_dice": 0.6},
    {"pair": "c", "label": 1, "name": "Thalamus", "dice": 0.85, "identity_dice": 0.55},
    {"pair": "c", "label": 2, "name": "Caudate", "dice": 0.55, "identity_dice": 0.35},
    {"pair": "c", "label": 7, "name": "", "dice": math.nan, "identity_dice": 0.65},
]


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def test_read_metric_rows_parses_numbers_and_empty_cells(tmp_path):
    _write_csv(tmp_path / "m.csv", ROWS)
    rows = read_metric_rows(tmp_path / "m.csv")
    assert rows[0] == {"pair": "a", "label": 1.0, "name": "Thalamus", "dice": 0.9, "identity_dice": 0.6}
    assert math.isnan(rows[-1]["dice"]) and rows[2]["name"] != rows[2]["name"]  # an empty name reads as NaN


def _boxes(fig):
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    medians = [line.get_xdata()[0] for line in ax.lines if line.get_color() == "tab:blue"]
    return ax, names, medians


@pytest.mark.parametrize("source", ["rows", "csv"])
def test_boxplot_one_box_per_structure_best_on_top(tmp_path, source):
    if source == "csv":
        _write_csv(tmp_path / "m.csv", ROWS)
    fig = label_metric_boxplot(tmp_path / "m.csv" if source == "csv" else ROWS)
    ax, names, medians = _boxes(fig)
    # bottom to top: the lowest median first; the unnamed label is called by its value
    assert names == ["Caudate", "label 7", "Thalamus"]
    np.testing.assert_allclose(medians, [0.55, 0.725, 0.85])  # label 7: median of 0.7 and 0.75, NaN left out
    marks = [line for line in ax.lines if line.get_marker() == "d"][0]
    np.testing.assert_allclose(marks.get_xdata(), [0.35, 0.65, 0.55])  # identity medians, same order
    assert ax.get_title() == "Dice per structure: 3 pairs, 3 structures"
    assert "no registration" in ax.get_xlabel()


def test_boxplot_distances_smallest_on_top_and_unsorted_order():
    values = [("a", 1, 2.0), ("a", 2, 5.0), ("b", 1, 3.0), ("b", 2, 6.0)]
    rows = [{"pair": p, "label": k, "hd95": v} for p, k, v in values]
    _, names, _ = _boxes(label_metric_boxplot(rows, metric="hd95", baseline=None))
    assert names == ["label 2", "label 1"]  # bottom to top: the smallest distance (the best) on top
    _, names, _ = _boxes(label_metric_boxplot(rows[::-1], metric="hd95", baseline=None, sort=False))
    assert names == ["label 1", "label 2"]  # first appearance (label 2) on top


def test_boxplot_refuses_a_metric_without_values():
    with pytest.raises(ValueError, match="no value of 'assd'"):
        label_metric_boxplot(ROWS, metric="assd")
