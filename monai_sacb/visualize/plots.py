# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Plots of a whole evaluation: a metric per structure over the pairs of a data set."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .utils import new_figure

__all__ = ["read_metric_rows", "label_metric_boxplot"]

_METRIC_NAMES = {"dice": "Dice", "hd95": "HD95", "assd": "ASSD", "identity_dice": "Dice without registration"}


def read_metric_rows(source: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """
    Rows of a per-label metric table: a CSV file (``metrics_per_label.csv`` of
    :py:class:`monai_sacb.handlers.RegistrationReport`) or rows already read; numbers become floats (an empty
    cell or ``nan`` a NaN), other cells stay strings.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, newline="") as f:
            source = list(csv.DictReader(f))
    rows = []
    for row in source:
        parsed = {}
        for key, value in row.items():
            if isinstance(value, str):
                try:
                    parsed[key] = float(value) if value.strip() else math.nan
                except ValueError:
                    parsed[key] = value
            else:
                parsed[key] = value
        rows.append(parsed)
    return rows


def _structure(row: Mapping[str, Any]) -> str:
    label = row.get("label")
    key = str(int(label)) if isinstance(label, float) and not math.isnan(label) else str(label)
    name = row.get("name")
    return name if isinstance(name, str) and name else f"label {key}"


def label_metric_boxplot(
    per_label: str | os.PathLike | Iterable[Mapping[str, Any]],
    metric: str = "dice",
    baseline: str | None = "identity_dice",
    baseline_label: str | None = "no registration",
    title: str | None = None,
    xlabel: str | None = None,
    sort: bool = True,
    dpi: int = 100,
) -> Any:
    """
    A horizontal box plot of ``metric`` per structure over the pairs (one box per label), with the baseline's
    median per structure as a grey mark.

    Args:
        per_label: ``metrics_per_label.csv`` (or its rows): one row per pair and label with the columns
            ``label``, ``name`` (optional) and the metric columns; NaN values are left out.
        metric: the column to plot, e.g. ``"dice"``, ``"hd95"``, ``"assd"``.
        baseline: a column whose median per structure is marked (``"identity_dice"``: no registration); ``None``
            for none.
        baseline_label: what the marks are, in the legend (default: the column name).
        title: figure title; default the metric and the number of pairs and structures.
        xlabel: axis label; default ``metric``.
        sort: order the structures by median, the best on top (highest Dice, smallest distance); ``False``
            keeps the order of first appearance, the first on top.
        dpi: resolution.

    Returns:
        a ``matplotlib.figure.Figure`` (Agg canvas).

    Raises:
        ValueError: when no row has a value of ``metric``.
    """
    rows = read_metric_rows(per_label)
    groups: dict[str, list[float]] = {}
    base: dict[str, list[float]] = {}
    pairs = set()
    for row in rows:
        if metric not in row:
            continue
        name = _structure(row)
        groups.setdefault(name, [])
        base.setdefault(name, [])
        pairs.add(row.get("pair"))
        value = row[metric]
        if isinstance(value, float) and not math.isnan(value):
            groups[name].append(value)
        if baseline and isinstance(row.get(baseline), float) and not math.isnan(row[baseline]):
            base[name].append(row[baseline])
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        raise ValueError(f"no value of {metric!r} in the per-label rows (columns: {sorted(rows[0]) if rows else []}).")
    names = list(groups)
    if sort:
        higher_is_better = "dice" in metric.lower()
        names.sort(key=lambda n: float(np.median(groups[n])), reverse=higher_is_better)
    # the first name goes on top: matplotlib puts position 1 at the bottom
    names = names[::-1]
    height = 0.75 + 0.135 * len(names)
    longest = max(len(n) for n in names)
    width = 4.2 + 0.055 * longest
    left = (0.055 * longest + 0.1) / width
    fig = new_figure((width, height), dpi=dpi)
    ax = fig.add_axes((left, 0.45 / height, 0.97 - left, 1.0 - 0.8 / height))
    positions = np.arange(1, len(names) + 1)
    ax.boxplot(
        [groups[n] for n in names], positions=positions, orientation="horizontal", widths=0.6,
        showfliers=True, flierprops={"markersize": 2}, medianprops={"color": "tab:blue"},
        boxprops={"linewidth": 0.7}, whiskerprops={"linewidth": 0.7}, capprops={"linewidth": 0.7},
    )  # fmt: skip
    marks = [(p, float(np.median(base[n]))) for p, n in zip(positions, names) if base.get(n)]
    if marks:
        ax.plot([m for _, m in marks], [p for p, _ in marks], "d", color="0.55", markersize=3)
        baseline_text = f"; grey diamonds: {baseline_label or baseline} (median)"
    else:
        baseline_text = ""
    ax.set_yticks(positions)
    ax.set_yticklabels(names, fontsize=6)
    ax.set_ylim(0.3, len(names) + 0.7)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", linewidth=0.4, alpha=0.5)
    ax.set_xlabel((xlabel or _METRIC_NAMES.get(metric, metric)) + baseline_text, fontsize=8)
    pairs.discard(None)
    name = _METRIC_NAMES.get(metric, metric)
    ax.set_title(title or f"{name} per structure: {len(pairs)} pairs, {len(names)} structures", fontsize=9)
    return fig
