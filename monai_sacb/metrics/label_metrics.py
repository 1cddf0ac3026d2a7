# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""
Per-label Dice, percentile Hausdorff distance and average symmetric surface distance between a warped moving
label map and a fixed label map. Atlases have many labels (IXI 30, LPBA40 54): Dice counts them all in one pass,
the surface distances go one label at a time, so no full one-hot volume is ever built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from monai.metrics import CumulativeIterationMetric, compute_average_surface_distance, compute_hausdorff_distance
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, convert_to_tensor

from .utils import SpacingLike, spacing_from_meta, spacing_to_tensor

__all__ = [
    "LabelDiceMetric",
    "LabelHausdorffDistanceMetric",
    "LabelSurfaceDistanceMetric",
    "compute_label_dice",
    "compute_label_hausdorff_distance",
    "compute_label_surface_distance",
    "present_labels",
]


def _check_label_maps(y_pred: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two (B, 1, *spatial) label maps and return them as plain tensors."""
    y_pred = convert_to_tensor(y_pred, track_meta=False)
    y = convert_to_tensor(y, track_meta=False)
    for name, t in (("y_pred", y_pred), ("y", y)):
        if t.ndim not in (4, 5) or t.shape[1] != 1:
            raise ValueError(
                f"{name} must be a label map of shape (B, 1, *spatial) with 2 or 3 spatial dims, "
                f"got shape {tuple(t.shape)}."
            )
        if t.is_floating_point() and not torch.equal(t, torch.round(t)):
            raise ValueError(f"{name} must hold integer label values (warp label maps with mode='nearest').")
    if y_pred.shape != y.shape:
        raise ValueError(
            f"y_pred and y label maps must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}."
        )
    return y_pred, y


def present_labels(y: torch.Tensor, background: int | None = 0) -> list[int]:
    """
    Sorted label values present in ``y`` (over the whole batch), without ``background``.

    Args:
        y: label map of any shape.
        background: value left out; ``None`` keeps every value.
    """
    values = [int(v) for v in torch.unique(convert_to_tensor(y, track_meta=False)).tolist()]
    return [v for v in values if background is None or v != background]


def _per_case_spacing(spacing: SpacingLike | None, batch_size: int, spatial_dims: int) -> list[list[float]] | None:
    if spacing is None:
        return None
    return spacing_to_tensor(spacing, batch_size, spatial_dims).tolist()


def _surface_metric_per_label(
    y_pred: Any,
    y: Any,
    labels: Sequence[int] | None,
    background: int | None,
    spacing: SpacingLike | None,
    surface_fn: Callable[..., torch.Tensor],
    **kwargs: Any,
) -> torch.Tensor:
    """
    Label loop of the surface-distance metrics, one label at a time: returns (B, L).

    For label ``labels[j]`` and case ``b`` the value is NaN when the label is absent from ``y`` or from
    ``y_pred`` (no surface to measure), otherwise that of the MONAI ``surface_fn`` (e.g.
    :py:func:`monai.metrics.compute_hausdorff_distance`), called once per label on the (len(cases), 1, *spatial)
    binary masks of the cases that have the label in both maps, with their spacing and ``kwargs``.
    """
    y_pred, y = _check_label_maps(y_pred, y)
    per_case = _per_case_spacing(spacing, y.shape[0], y.ndim - 2)
    labels = present_labels(y, background) if labels is None else [int(v) for v in labels]
    out = torch.full((y.shape[0], len(labels)), float("nan"), dtype=torch.float32, device=y.device)
    for j, value in enumerate(labels):
        true_mask = y == value
        pred_mask = y_pred == value
        both = true_mask.flatten(1).any(1) & pred_mask.flatten(1).any(1)
        cases = torch.nonzero(both).flatten().tolist()
        if cases:
            case_spacing = None if per_case is None else [per_case[b] for b in cases]
            values = surface_fn(
                pred_mask[cases], true_mask[cases], include_background=True, spacing=case_spacing, **kwargs
            )
            out[cases, j] = values.flatten().to(out)
    return out


def compute_label_dice(
    y_pred: torch.Tensor, y: torch.Tensor, labels: Sequence[int] | None = None, background: int | None = 0
) -> torch.Tensor:
    """
    Dice overlap per label between two integer label maps, ``2 |P & T| / (|P| + |T|)``.

    All labels are counted in one pass over the volume (a confusion count of label indices) rather than by
    :py:func:`monai.metrics.compute_dice` on one mask per label: same formula and values (the tests compare
    them), but about 0.5 s per label less at IXI size.

    Args:
        y_pred: warped moving label map, shape (B, 1, *spatial), integer values.
        y: fixed label map, same shape.
        labels: label values to evaluate, in the order of the output columns; ``None`` takes the values present
            in ``y`` over the batch (sorted), without ``background``.
        background: value left out when ``labels`` is ``None``.

    Returns:
        (B, L) Dice in [0, 1]: 0 where a label of ``y`` is absent from ``y_pred``, NaN where a label is absent
        from ``y`` (not evaluated).
    """
    y_pred, y = _check_label_maps(y_pred, y)
    labels = present_labels(y, background) if labels is None else [int(v) for v in labels]
    n = len(labels)
    if n == 0:
        return torch.empty((y.shape[0], 0), dtype=torch.float32, device=y.device)
    order = sorted(range(n), key=lambda j: labels[j])
    sorted_values = torch.tensor([labels[j] for j in order], dtype=torch.int64, device=y.device)

    def index_of(label_map: torch.Tensor) -> torch.Tensor:
        # 1 + position in sorted_values for the listed labels, 0 for any other value
        values = label_map.flatten(1).long()
        pos = torch.searchsorted(sorted_values, values).clamp_max(n - 1)
        return torch.where(sorted_values[pos] == values, pos + 1, 0)

    pred_idx, true_idx = index_of(y_pred), index_of(y)
    # counts[b, i, j]: voxels of case b with fixed index i and predicted index j
    counts = torch.stack(
        [torch.bincount(t * (n + 1) + p, minlength=(n + 1) ** 2) for p, t in zip(pred_idx, true_idx)]
    ).view(-1, n + 1, n + 1).double()
    intersection = torch.diagonal(counts, dim1=1, dim2=2)[:, 1:]
    true_size = counts.sum(2)[:, 1:]
    pred_size = counts.sum(1)[:, 1:]
    dice = torch.where(true_size > 0, 2.0 * intersection / (true_size + pred_size), float("nan"))
    out = torch.empty_like(dice)
    out[:, order] = dice
    return out.float()


def compute_label_hausdorff_distance(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    labels: Sequence[int] | None = None,
    background: int | None = 0,
    percentile: float | None = 95.0,
    spacing: SpacingLike | None = None,
) -> torch.Tensor:
    """
    Symmetric percentile Hausdorff distance per label between two integer label maps, in the unit of ``spacing``
    (mm with the image spacing; voxels when ``spacing`` is ``None``). Uses
    :py:func:`monai.metrics.compute_hausdorff_distance` (Euclidean distances between the boundary voxels)
    for each label.

    Args:
        y_pred: warped moving label map, shape (B, 1, *spatial), integer values.
        y: fixed label map, same shape.
        labels: label values to evaluate (output column order); ``None`` takes the values present in ``y``
            over the batch, without ``background``.
        background: value left out when ``labels`` is ``None``.
        percentile: percentile of the surface distances (95 gives HD95); ``None`` gives the maximum (HD).
        spacing: voxel size per axis: one number, ``spatial_dims`` numbers, or one such sequence per case.

    Returns:
        (B, L) distances; NaN where a label is absent from ``y`` or from ``y_pred`` (undefined).
    """
    return _surface_metric_per_label(
        y_pred, y, labels, background, spacing, compute_hausdorff_distance, percentile=percentile
    )


def compute_label_surface_distance(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    labels: Sequence[int] | None = None,
    background: int | None = 0,
    symmetric: bool = True,
    spacing: SpacingLike | None = None,
) -> torch.Tensor:
    """
    Average surface distance per label between two integer label maps (ASSD when ``symmetric``), in the unit
    of ``spacing`` (mm with the image spacing; voxels when ``spacing`` is ``None``). Uses
    :py:func:`monai.metrics.compute_average_surface_distance` for each label.

    Args:
        y_pred: warped moving label map, shape (B, 1, *spatial), integer values.
        y: fixed label map, same shape.
        labels: label values to evaluate (output column order); ``None`` takes the values present in ``y``
            over the batch, without ``background``.
        background: value left out when ``labels`` is ``None``.
        symmetric: average over the boundary voxels of both maps (ASSD); ``False`` averages the distances
            from the ``y_pred`` boundary to the ``y`` boundary only.
        spacing: voxel size per axis: one number, ``spatial_dims`` numbers, or one such sequence per case.

    Returns:
        (B, L) distances; NaN where a label is absent from ``y`` or from ``y_pred`` (undefined).
    """
    return _surface_metric_per_label(
        y_pred, y, labels, background, spacing, compute_average_surface_distance, symmetric=symmetric
    )


class _LabelMetric(CumulativeIterationMetric):
    """
    Shared logic of the per-label metrics: label selection, spacing resolution, output shape and reduction.
    Subclasses implement ``_compute(y_pred, y, labels, spacing) -> (B, L)``.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        background: int | None = 0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        return_with_label: bool | list[str] = False,
    ) -> None:
        super().__init__()
        self.labels = None if labels is None else [int(v) for v in labels]
        self.background = background
        self.reduction = reduction
        self.get_not_nans = get_not_nans
        self.return_with_label = return_with_label

    def _compute(
        self, y_pred: torch.Tensor, y: torch.Tensor, labels: list[int] | None, spacing: list[list[float]] | None
    ) -> torch.Tensor:
        raise NotImplementedError(f"Subclass {self.__class__.__name__} must implement this method.")

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """
        Args:
            y_pred: warped moving label map, shape (B, 1, *spatial), integer values.
            y: fixed label map, same shape; a MetaTensor also provides the spacing (``pixdim``) when none is given.
            kwargs: ``spacing`` overrides the constructor's (distance metrics only).

        Returns:
            (B, len(labels)) per-label values when ``labels`` was given, else (B, 1) per-case means over the
            labels present in each fixed map.
        """
        if y is None:
            raise ValueError(f"{self.__class__.__name__} needs the fixed label map y.")
        spacing = kwargs.get("spacing", getattr(self, "spacing", None))
        meta_spacing = spacing_from_meta(y)
        plain_pred, plain_y = _check_label_maps(y_pred, y)
        batch_size, spatial_dims = plain_y.shape[0], plain_y.ndim - 2
        per_case = _per_case_spacing(spacing, batch_size, spatial_dims) if spacing is not None else meta_spacing
        if self.labels is not None:
            return self._compute(plain_pred, plain_y, self.labels, per_case)
        rows = []
        for b in range(batch_size):
            case_spacing = None if per_case is None else [per_case[b]]
            values = self._compute(plain_pred[b : b + 1], plain_y[b : b + 1], None, case_spacing)
            rows.append(torch.nanmean(values, dim=1) if values.numel() else values.new_full((1,), float("nan")))
        return torch.stack(rows)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | dict[str, float] | tuple[torch.Tensor | dict[str, float], torch.Tensor]:
        """
        Reduce the buffered (N, L) values over their not-NaN entries.

        Args:
            reduction: overrides ``self.reduction`` for this call. With ``labels`` given, ``"mean_batch"`` gives
                the per-label means (L,) and ``"mean_channel"`` the per-case means (N,).
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}.")
        reduction = reduction or self.reduction
        f, not_nans = do_metric_reduction(data, reduction)
        if reduction == MetricReduction.MEAN_BATCH and self.return_with_label and self.labels is not None:
            names = (
                [f"label_{v}" for v in self.labels]
                if isinstance(self.return_with_label, bool)
                else list(self.return_with_label)
            )
            f = {name: float(v) for name, v in zip(names, f)}  # type: ignore[assignment]
        return (f, not_nans) if self.get_not_nans else f


class LabelDiceMetric(_LabelMetric):
    """
    Dice overlap per label between the warped moving and the fixed label maps, accumulated over iterations.
    See :py:func:`compute_label_dice`. A label present in the fixed map but absent from the prediction scores 0.

    Call it with ``y_pred`` = the warped moving label map and ``y`` = the fixed label map, both integer-valued
    (B, 1, *spatial) tensors (or lists of (1, *spatial) tensors). Each call buffers:

    - ``labels`` given: (B, L), column ``j`` for ``labels[j]``, NaN where the fixed map lacks the label;
    - ``labels=None``: (B, 1), each case's mean over the labels present in its fixed map (``background``
      excluded), NaN entries skipped.

    ``reduction`` and ``get_not_nans`` behave as in MONAI: reductions skip NaN entries, and ``"mean"`` averages
    each case over its not-NaN labels first, then over the cases that have any (``not_nans`` counts those
    cases; a reduction over no value at all gives 0, MONAI's convention). So ``"mean"`` is the usual "mean over
    labels, then over pairs" either way; with ``labels`` given ``"mean_batch"`` gives per-label means.

    Example:

    .. code-block:: python

        metric = LabelDiceMetric(labels=[2, 3, 4])  # per-label columns in this order
        for batch in loader:
            warped_label = warp_nearest(batch["moving_label"], ddf)
            metric(warped_label, batch["fixed_label"])
        mean_dice = metric.aggregate().item()
        per_label = metric.aggregate("mean_batch")

    Args:
        labels: label values to evaluate; ``None``: those present in each fixed map, without ``background``.
        background: value left out when ``labels`` is ``None`` (``None`` keeps every value).
        reduction: mode of reduction, see :py:class:`monai.utils.enums.MetricReduction`.
        get_not_nans: whether ``aggregate()`` also returns the count of not-NaN values.
        return_with_label: with ``labels`` given and ``reduction="mean_batch"``, ``aggregate()`` returns a dict
            ``{"label_<value>": mean}`` (or keyed by the given list of names).
    """

    def _compute(
        self, y_pred: torch.Tensor, y: torch.Tensor, labels: list[int] | None, spacing: list[list[float]] | None
    ) -> torch.Tensor:
        return compute_label_dice(y_pred, y, labels=labels, background=self.background)


class LabelHausdorffDistanceMetric(_LabelMetric):
    """
    Percentile (default 95) symmetric Hausdorff distance per label, in mm when a spacing is known, accumulated
    over iterations. See :py:func:`compute_label_hausdorff_distance`. NaN where the label is absent from the
    prediction or the fixed map (undefined); reductions skip it and ``not_nans`` shows it.

    Inputs, buffered shapes and reductions as for :py:class:`LabelDiceMetric`.
    Spacing, first found: the ``spacing=`` keyword of the call, the constructor's ``spacing``, the ``pixdim``
    of ``y`` when it is a MetaTensor; otherwise distances are in voxels.

    Args:
        percentile: percentile of the surface distances; ``None`` gives the maximum (HD).
        spacing: voxel size in mm: one number, ``spatial_dims`` numbers, or one such sequence per case.
        labels, background, reduction, get_not_nans, return_with_label: as for :py:class:`LabelDiceMetric`.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        background: int | None = 0,
        percentile: float | None = 95.0,
        spacing: SpacingLike | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        return_with_label: bool | list[str] = False,
    ) -> None:
        super().__init__(labels, background, reduction, get_not_nans, return_with_label)
        self.percentile = percentile
        self.spacing = spacing

    def _compute(
        self, y_pred: torch.Tensor, y: torch.Tensor, labels: list[int] | None, spacing: list[list[float]] | None
    ) -> torch.Tensor:
        return compute_label_hausdorff_distance(
            y_pred, y, labels=labels, background=self.background, percentile=self.percentile, spacing=spacing
        )


class LabelSurfaceDistanceMetric(_LabelMetric):
    """
    Average symmetric surface distance (ASSD) per label, in mm when a spacing is known, accumulated over
    iterations. See :py:func:`compute_label_surface_distance`. NaN where the label is absent from the
    prediction or the fixed map (undefined); reductions skip it and ``not_nans`` shows it.

    Inputs, buffered shapes and reductions as for :py:class:`LabelDiceMetric`.
    Spacing, first found: the ``spacing=`` keyword of the call, the constructor's ``spacing``, the ``pixdim``
    of ``y`` when it is a MetaTensor; otherwise distances are in voxels.

    Args:
        symmetric: ``True`` for ASSD; ``False`` for the mean distance from the prediction's boundary only.
        spacing: voxel size in mm: one number, ``spatial_dims`` numbers, or one such sequence per case.
        labels, background, reduction, get_not_nans, return_with_label: as for :py:class:`LabelDiceMetric`.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        background: int | None = 0,
        symmetric: bool = True,
        spacing: SpacingLike | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        return_with_label: bool | list[str] = False,
    ) -> None:
        super().__init__(labels, background, reduction, get_not_nans, return_with_label)
        self.symmetric = symmetric
        self.spacing = spacing

    def _compute(
        self, y_pred: torch.Tensor, y: torch.Tensor, labels: list[int] | None, spacing: list[list[float]] | None
    ) -> torch.Tensor:
        return compute_label_surface_distance(
            y_pred, y, labels=labels, background=self.background, symmetric=self.symmetric, spacing=spacing
        )
