# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""
The evaluation report of a registration run: every metric of the paper's Table 1, per pair and per label, written
as CSV, JSON and Markdown when the evaluator completes (the role of :py:class:`monai.handlers.MetricsSaver` with
``save_details``, for pairs whose label sets differ).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from monai.data import MetaTensor, decollate_batch
from monai.data.utils import affine_to_spacing
from monai.engines.utils import IterationEvents
from monai.utils import IgniteInfo, min_version, optional_import

from monai_sacb.data.utils import atomic_write
from monai_sacb.metrics import (
    compute_label_dice,
    compute_label_hausdorff_distance,
    compute_label_surface_distance,
    percent_folding,
    present_labels,
    sd_log_jacobian,
)

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = [
    "RegistrationReport",
    "LABEL_METRICS",
    "PAIR_METRICS",
    "TABLE_COLUMNS",
    "engine_items",
    "item_spacing",
    "summarize",
]

#: per-label metrics, computed for the warped label and, as ``identity_<name>``, for the unwarped moving label
LABEL_METRICS = ("dice", "hd95", "assd")
#: per-pair metrics of the displacement field and the time
PAIR_METRICS = ("percent_folding", "sd_log_jacobian", "seconds")
#: the columns of the report's first table (the paper's Table 1): metric, header (``{unit}``: mm or voxels), digits
TABLE_COLUMNS = (
    ("dice", "Dice", 3),
    ("hd95", "HD95 ({unit})", 2),
    ("assd", "ASSD ({unit})", 2),
    ("percent_folding", "% \\|J\\|<=0", 3),
    ("sd_log_jacobian", "SDlogJ", 3),
    ("seconds", "s/pair", 2),
)


def item_spacing(value: Any) -> list[float] | None:
    """The voxel size per spatial axis of a channel-first MetaTensor, read from its affine; ``None`` otherwise."""
    if not isinstance(value, MetaTensor):
        return None
    affine = value.affine
    if affine.ndim != 2:
        return None
    return [float(v) for v in affine_to_spacing(affine.detach().cpu().double(), r=value.ndim - 1)]


def _as_items(data: Any, what: str) -> list[Mapping[str, Any]]:
    if isinstance(data, Mapping):
        return list(decollate_batch(dict(data), detach=True))
    if isinstance(data, Sequence) and all(isinstance(d, Mapping) for d in data):
        return list(data)
    raise ValueError(
        f"engine.state.{what} must be a list of per-pair dicts or a dict of batches, got {type(data).__name__}."
    )


def engine_items(engine: Engine) -> list[dict[str, Any]]:
    """
    The pairs of an engine's current iteration: each entry of ``engine.state.batch`` updated with its entry of
    ``engine.state.output``. After the postprocessing of a MONAI evaluator the batch holds the pair's inputs (the
    images and label maps, MetaTensors with their affines) and the output what the iteration made (the warped
    image and label, the ddf, the target ``label``); lists of per-pair dicts, or dicts of batches.
    """
    outputs = _as_items(engine.state.output, "output")
    batch = getattr(engine.state, "batch", None)
    batches = _as_items(batch, "batch") if batch is not None else []
    if len(batches) != len(outputs):
        batches = [{}] * len(outputs)
    return [{**b, **o} for b, o in zip(batches, outputs)]


def _source(value: Any) -> str:
    return str(value.meta.get("filename_or_obj", "")) if isinstance(value, MetaTensor) else ""


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (over the pairs, divisor N as ``numpy.std``), median, min, max and the count of the
    not-NaN values (NaN statistics when there are none)."""
    a = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if not a.size:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "median": float(np.median(a)),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def _json_safe(value: Any) -> Any:
    """NaN becomes null (strict JSON), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _cell(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


class RegistrationReport:
    """
    Ignite handler of an evaluator that registers labelled pairs: it measures every pair of the run and, when the
    run completes, writes into ``output_dir``:

    - ``metrics_per_pair.csv``: one row per pair: ``pair``, ``moving_image``, ``fixed_image``, ``num_labels``,
      ``dice``, ``hd95``, ``assd`` (each the mean over the pair's labels), ``percent_folding``,
      ``sd_log_jacobian``, ``seconds``, and the identity baseline ``identity_dice``, ``identity_hd95``,
      ``identity_assd`` (the unwarped moving label against the fixed label);
    - ``metrics_per_label.csv``: one row per pair and label: ``pair``, ``label``, ``name``, the six label metrics;
    - ``summary.json``: mean, std, median, min, max and count of every per-pair column, the same per label,
      the description, grid, units and number of pairs (null for a statistic of no value);
    - ``report.md``: a Table-1 style table (Dice, HD95, ASSD, % |J|<=0, SDlogJ, s/pair as mean ± std over the
      pairs, an identity row first), a line saying what the data is, and Dice per structure;
    - with ``boxplot``: ``figures/dice_per_structure.png``, the box plot of
      :py:func:`monai_sacb.visualize.label_metric_boxplot` over ``metrics_per_label.csv``.

    The values are those of :py:mod:`monai_sacb.metrics`, per pair: Dice, HD95 and ASSD per label of the fixed
    label map (:py:func:`~monai_sacb.metrics.compute_label_dice`,
    :py:func:`~monai_sacb.metrics.compute_label_hausdorff_distance`,
    :py:func:`~monai_sacb.metrics.compute_label_surface_distance`) and their mean over the labels, NaN skipped
    (what :py:class:`~monai_sacb.metrics.LabelDiceMetric` with ``labels=None`` buffers per case);
    :py:func:`~monai_sacb.metrics.percent_folding` and :py:func:`~monai_sacb.metrics.sd_log_jacobian` of the ddf
    over the whole grid. Distances are in mm when ``spacing_key`` holds a MetaTensor (the voxel size of its affine:
    for the bundle, the fixed image on the network grid after preprocessing), else in voxels.

    ``seconds`` is the time of the engine's forward pass (network and instance optimisation, from
    ``ITERATION_STARTED`` to ``FORWARD_COMPLETED``, with a CUDA synchronisation), divided by the batch size.

    The handler reads each pair's batch entry updated with its output (:py:func:`engine_items`) after the
    postprocessing. It runs in one process: in a multi-GPU run, attach it to one rank's evaluator of all the pairs.

    Args:
        output_dir: folder of the files (created).
        description: the line saying what the data is, e.g. "16 held-out validation pairs of data format synth".
        method: the name of the registered row of the table.
        label_names: ``{label value: name}`` (keys int or str) or a JSON file of it, for the per-label rows.
        labels: label values to evaluate in every pair; default those present in each fixed label map.
        background: value left out when ``labels`` is None.
        percentile: of the Hausdorff distance (95: HD95).
        moving_label_key, fixed_label_key, warped_label_key, ddf_key: keys of the output items.
        spacing_key: key of a MetaTensor on the evaluation grid whose affine gives the voxel size.
        pair_name: ``pair_name(item) -> str`` naming a pair; default ``pair_<index>``.
        boxplot: also write ``figures/dice_per_structure.png``.
        extra_lines: further lines under the description in ``report.md``.
        model_path: the weights evaluated, named in ``report.md`` with ``device`` and the number of CPU threads.
        device: where the network ran.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        description: str = "",
        method: str = "registration",
        label_names: Mapping[Any, str] | str | os.PathLike | None = None,
        labels: Sequence[int] | None = None,
        background: int | None = 0,
        percentile: float = 95.0,
        moving_label_key: str = "moving_label",
        fixed_label_key: str = "fixed_label",
        warped_label_key: str = "warped_label",
        ddf_key: str = "ddf",
        spacing_key: str = "fixed_image",
        pair_name: Callable[[Mapping[str, Any]], str] | None = None,
        boxplot: bool = True,
        extra_lines: Sequence[str] = (),
        model_path: str | os.PathLike | None = None,
        device: Any = None,
    ) -> None:
        self.output_dir = os.fspath(output_dir)
        self.description = description
        self.method = method
        self.label_names = self._read_names(label_names)
        self.labels = None if labels is None else [int(v) for v in labels]
        self.background = background
        self.percentile = percentile
        self.moving_label_key = moving_label_key
        self.fixed_label_key = fixed_label_key
        self.warped_label_key = warped_label_key
        self.ddf_key = ddf_key
        self.spacing_key = spacing_key
        self.pair_name = pair_name
        self.boxplot = boxplot
        self.extra_lines = list(extra_lines)
        if model_path is not None:
            where = f"; device: {device}" if device is not None else ""
            threads = f", {torch.get_num_threads()} threads" if device is None or str(device).startswith("cpu") else ""
            self.extra_lines.append(f"Model: {os.path.abspath(os.fspath(model_path))}{where}{threads}.")
        self.logger = logging.getLogger(__name__)
        self.reset()

    @staticmethod
    def _read_names(label_names: Mapping[Any, str] | str | os.PathLike | None) -> dict[int, str]:
        if label_names is None:
            return {}
        if isinstance(label_names, (str, os.PathLike)):
            with open(label_names) as f:
                label_names = json.load(f)
        return {int(k): str(v) for k, v in label_names.items()}  # type: ignore[union-attr]

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the pairs measured so far (at each run's start)."""
        self.pairs: list[dict[str, Any]] = []
        self.per_label: list[dict[str, Any]] = []
        self.spacings: list[list[float] | None] = []
        self.grid: tuple[int, ...] | None = None
        self._started = 0.0
        self._forward_seconds = math.nan

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_STARTED, self._start_clock)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._stop_clock)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    @staticmethod
    def _synchronize() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def _start_clock(self, engine: Engine) -> None:
        self._synchronize()
        self._forward_seconds = math.nan
        self._started = time.perf_counter()

    def _stop_clock(self, engine: Engine) -> None:
        self._synchronize()
        self._forward_seconds = time.perf_counter() - self._started

    def collect(self, engine: Engine) -> None:
        """Measure the pairs of the engine's current iteration (called at ``ITERATION_COMPLETED``)."""
        items = engine_items(engine)
        seconds = self._forward_seconds / len(items) if items else math.nan
        for item in items:
            self.add_pair(item, seconds)

    def _get(self, item: Mapping[str, Any], key: str) -> torch.Tensor:
        if key not in item or item[key] is None:
            raise KeyError(
                f"RegistrationReport needs {key!r} in every output item (found {sorted(map(str, item))}): the pairs "
                "must have label maps, and the postprocessing must give the warped label and the ddf "
                "(FlattenSubKeysd('pred'), Warpd)."
            )
        value = item[key]
        value = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
        return value.detach().cpu()

    def add_pair(self, item: Mapping[str, Any], seconds: float = math.nan) -> dict[str, Any]:
        """
        Measure one pair: ``item`` holds channel-first tensors (the moving, fixed and warped label maps and the ddf
        in voxels) under the handler's keys. Returns its row of ``metrics_per_pair.csv``.
        """
        fixed = self._get(item, self.fixed_label_key)[None]
        moving = self._get(item, self.moving_label_key)[None]
        warped = self._get(item, self.warped_label_key)[None]
        ddf = self._get(item, self.ddf_key)[None]
        spacing = item_spacing(item.get(self.spacing_key))
        index = len(self.pairs)
        name = self.pair_name(item) if self.pair_name is not None else f"pair_{index:03d}"
        labels = self.labels if self.labels is not None else present_labels(fixed, self.background)
        per_label: dict[str, np.ndarray] = {}
        for prefix, pred in (("", warped), ("identity_", moving)):
            per_label[prefix + "dice"] = compute_label_dice(pred, fixed, labels=labels)[0].numpy()
            per_label[prefix + "hd95"] = compute_label_hausdorff_distance(
                pred, fixed, labels=labels, percentile=self.percentile, spacing=spacing
            )[0].numpy()
            per_label[prefix + "assd"] = compute_label_surface_distance(pred, fixed, labels=labels, spacing=spacing)[
                0
            ].numpy()
        row: dict[str, Any] = {
            "pair": name,
            "moving_image": _source(item.get("moving_image")),
            "fixed_image": _source(item.get("fixed_image")),
            "num_labels": len(labels),
        }
        for metric in LABEL_METRICS:
            row[metric] = _nanmean(per_label[metric])
        row["percent_folding"] = float(percent_folding(ddf)[0])
        row["sd_log_jacobian"] = float(sd_log_jacobian(ddf)[0])
        row["seconds"] = float(seconds)
        for metric in LABEL_METRICS:
            row["identity_" + metric] = _nanmean(per_label["identity_" + metric])
        self.pairs.append(row)
        self.spacings.append(spacing)
        self.grid = tuple(int(s) for s in fixed.shape[2:])
        for j, value in enumerate(labels):
            entry = {"pair": name, "label": int(value), "name": self.label_names.get(int(value), "")}
            entry.update({k: float(v[j]) for k, v in per_label.items()})
            self.per_label.append(entry)
        return row

    # --- the files -------------------------------------------------------------------------------------------------

    @property
    def unit(self) -> str:
        """``mm`` when every pair had a spacing, else ``voxels``."""
        return "mm" if self.spacings and all(s is not None for s in self.spacings) else "voxels"

    def summary(self) -> dict[str, Any]:
        """The content of ``summary.json``."""
        columns = [*LABEL_METRICS, *PAIR_METRICS, *("identity_" + m for m in LABEL_METRICS)]
        label_columns = [*LABEL_METRICS, *("identity_" + m for m in LABEL_METRICS)]
        by_label: dict[int, list[dict[str, Any]]] = {}
        for entry in self.per_label:
            by_label.setdefault(entry["label"], []).append(entry)
        spacing = next((s for s in self.spacings if s is not None), None)
        return {
            "description": self.description,
            "method": self.method,
            "num_pairs": len(self.pairs),
            "grid": {"shape": list(self.grid) if self.grid else None, "spacing": spacing},
            "units": {"hd95": self.unit, "assd": self.unit, "seconds": "s", "percent_folding": "%"},
            "metrics": {c: summarize([p[c] for p in self.pairs]) for c in columns},
            "per_label": {
                str(label): {"name": rows[0]["name"], **{c: summarize([r[c] for r in rows]) for c in label_columns}}
                for label, rows in sorted(by_label.items())
            },
        }

    def table(self, summary: Mapping[str, Any] | None = None) -> str:
        """The report's first table (Markdown): an identity row and the method's row, mean ± std over the pairs."""
        summary = summary or self.summary()
        metrics = summary["metrics"]
        headers = [header.format(unit=self.unit) for _, header, _ in TABLE_COLUMNS]
        lines = ["| Method | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]

        def cell(name: str, digits: int) -> str:
            s = metrics.get(name)
            if not s or not s["n"]:
                return "-"
            return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

        identity = [cell("identity_" + m, d) if m in LABEL_METRICS else "-" for m, _, d in TABLE_COLUMNS]
        lines.append("| Identity (no registration) | " + " | ".join(identity) + " |")
        lines.append(f"| {self.method} | " + " | ".join(cell(m, d) for m, _, d in TABLE_COLUMNS) + " |")
        return "\n".join(lines)

    def markdown(self, summary: Mapping[str, Any] | None = None) -> str:
        """The content of ``report.md``."""
        summary = summary or self.summary()
        grid = summary["grid"]
        lines = ["# Registration report", ""]
        if self.description:
            lines += [f"Data: {self.description}", ""]
        shape = "x".join(map(str, grid["shape"])) if grid["shape"] else "?"
        where = f"{shape} voxels" + (
            f" of {' x '.join(f'{s:g}' for s in grid['spacing'])} mm" if grid["spacing"] else ""
        )
        lines += [
            f"{summary['num_pairs']} pairs, evaluated on the registration grid ({where}); mean ± std over the pairs "
            f"of each pair's mean over its labels. Distances in {self.unit}; % |J|<=0 and SDlogJ of the ddf over the "
            "whole grid; s/pair: network and instance optimisation.",
            "",
        ]
        lines += [*(f"{line}" for line in self.extra_lines), ""] if self.extra_lines else []
        lines += [self.table(summary), ""]
        per_label = summary["per_label"]
        if per_label:
            lines += [
                "## Dice per structure",
                "",
                "| label | structure | Dice | identity Dice | pairs |",
                "|---|---|---|---|---|",
            ]
            order = sorted(per_label.items(), key=lambda kv: -np.nan_to_num(kv[1]["dice"]["mean"], nan=-1.0))
            for label, info in order:
                d, i = info["dice"], info["identity_dice"]
                lines.append(
                    f"| {label} | {info['name']} | {d['mean']:.3f} ± {d['std']:.3f} | "
                    f"{i['mean']:.3f} ± {i['std']:.3f} | {d['n']} |"
                )
            lines.append("")
        lines += [
            "Files: `metrics_per_pair.csv`, `metrics_per_label.csv`, `summary.json`"
            + (", `figures/dice_per_structure.png`" if self.boxplot else "")
            + ".",
            "",
        ]
        return "\n".join(lines)

    @staticmethod
    def _write_csv(path: str, rows: list[dict[str, Any]], fields: Sequence[str]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(fields))
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: _cell(row.get(k, "")) for k in fields})

        atomic_write(Path(path), write)

    @staticmethod
    def _write_text(path: str, text: str) -> None:
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))

    def write(self, engine: Engine | None = None) -> dict[str, str]:
        """
        Write the files (called at ``COMPLETED``); returns their paths by name.

        Raises:
            RuntimeError: when no pair was measured.
        """
        if not self.pairs:
            raise RuntimeError("RegistrationReport measured no pair: the evaluator ran no iteration.")
        os.makedirs(self.output_dir, exist_ok=True)
        paths = {
            name: os.path.join(self.output_dir, name)
            for name in ("metrics_per_pair.csv", "metrics_per_label.csv", "summary.json", "report.md")
        }
        pair_fields = ["pair", "moving_image", "fixed_image", "num_labels", *LABEL_METRICS, *PAIR_METRICS]
        pair_fields += ["identity_" + m for m in LABEL_METRICS]
        label_fields = ["pair", "label", "name", *LABEL_METRICS, *("identity_" + m for m in LABEL_METRICS)]
        self._write_csv(paths["metrics_per_pair.csv"], self.pairs, pair_fields)
        self._write_csv(paths["metrics_per_label.csv"], self.per_label, label_fields)
        summary = self.summary()
        self._write_text(paths["summary.json"], json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
        self._write_text(paths["report.md"], self.markdown(summary))
        if self.boxplot:
            from monai_sacb.visualize import label_metric_boxplot, save_figure

            figure = label_metric_boxplot(paths["metrics_per_label.csv"], metric="dice", baseline="identity_dice")
            paths["boxplot"] = save_figure(figure, os.path.join(self.output_dir, "figures", "dice_per_structure.png"))
        mean = summary["metrics"]
        self.logger.info(
            f"registration report of {len(self.pairs)} pairs in {self.output_dir}: Dice {mean['dice']['mean']:.3f} "
            f"(identity {mean['identity_dice']['mean']:.3f}), HD95 {mean['hd95']['mean']:.2f} {self.unit}, "
            f"% |J|<=0 {mean['percent_folding']['mean']:.3f}, {mean['seconds']['mean']:.2f} s/pair"
        )
        return paths
