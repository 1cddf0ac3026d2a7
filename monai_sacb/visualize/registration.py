# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""
The panel of one registered pair: fixed, moving and warped slices with label contours, a checkerboard of fixed
and warped, the deformed grid and the log-Jacobian map with the folded voxels marked, in three orientations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monai.utils import convert_to_numpy

from monai_sacb.metrics import jacobian_determinant

from .utils import as_volume, checkerboard, label_boundaries, new_figure

__all__ = ["ORIENTATIONS", "PANEL_COLUMNS", "registration_panel", "slice_centre", "log_jacobian"]

#: the rows of a panel; for an array in RAS order (axis 0 to the right, 1 anterior, 2 superior, what the bundle's
#: ``Orientationd(axcodes="RAS")`` gives) each row shows the plane normal to ``axis`` with ``(x, y)`` on screen
#: (neurological view: the subject's right on the right, anterior and superior up).
ORIENTATIONS = {"axial": (2, (0, 1)), "coronal": (1, (0, 2)), "sagittal": (0, (1, 2))}
#: the columns of a panel
PANEL_COLUMNS = ("fixed", "moving", "warped", "checkerboard fixed/warped", "deformed grid", "log|J|")
_LOG_J_RANGE = 1.0  # the colour scale of log|J| is clipped to [-1, 1] (|J| from 0.37 to 2.7)
_FOLD_COLOUR = (0.0, 1.0, 0.0, 1.0)  # folded voxels (|J| <= 0): green, outside the blue-red scale


def _ddf_array(ddf: Any) -> np.ndarray:
    array = convert_to_numpy(ddf.detach().cpu() if isinstance(ddf, torch.Tensor) else ddf)
    if array.ndim == 5 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 4 or array.shape[0] != 3:
        raise ValueError(f"ddf must be (3, *S) or (1, 3, *S) in voxels, got shape {array.shape}.")
    return array.astype(np.float32, copy=False)


def log_jacobian(ddf: Any, eps: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """
    ``log(max(|J|, eps))`` of a 3D ddf in voxels and the mask of folded voxels (``|J| <= 0``), each of shape S,
    with :py:func:`monai_sacb.metrics.jacobian_determinant` (so the folded voxels are those that
    :py:func:`monai_sacb.metrics.percent_folding` counts).
    """
    det = jacobian_determinant(torch.as_tensor(_ddf_array(ddf))[None])[0, 0].numpy()
    return np.log(np.maximum(det, eps)), det <= 0


def slice_centre(image: np.ndarray, label: np.ndarray | None = None) -> tuple[int, int, int]:
    """The centre of the bounding box of ``label > 0``, else of ``image`` above its minimum, else of the grid."""
    for mask in (None if label is None else label > 0, image > image.min()):
        if mask is not None and mask.any():
            idx = np.nonzero(mask)
            return tuple(int((i.min() + i.max()) // 2) for i in idx)  # type: ignore[return-value]
    return tuple(int(s // 2) for s in image.shape)  # type: ignore[return-value]


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice ``index`` normal to ``axis``, transposed for ``imshow(origin="lower")``: rows are screen y."""
    return np.take(volume, index, axis=axis).T


def _contour_rgba(label: np.ndarray, max_label: int) -> np.ndarray:
    """An RGBA image, opaque on the label boundaries (a colour per label value), transparent elsewhere."""
    from matplotlib import colormaps

    edge = label_boundaries(label)
    rgba = np.zeros((*label.shape, 4), dtype=np.float32)
    if edge.any():
        cmap = colormaps["gist_rainbow"]
        rgba[edge] = cmap((label[edge].astype(np.float64) % max(max_label, 1)) / max(max_label, 1))
        rgba[edge, 3] = 0.8
    return rgba


def _deformed_grid_lines(ux: np.ndarray, uy: np.ndarray, step: int) -> list[np.ndarray]:
    """Lines of the grid ``p + u(p)`` in screen coordinates, every ``step`` voxels along each screen axis."""
    ny, nx = ux.shape  # screen rows (y), columns (x)
    x = np.arange(nx)[None, :] + ux
    y = np.arange(ny)[:, None] + uy
    lines = [np.stack([x[r], y[r]], 1) for r in range(0, ny, step)]
    lines += [np.stack([x[:, c], y[:, c]], 1) for c in range(0, nx, step)]
    return lines


def registration_panel(
    fixed: Any,
    moving: Any,
    warped: Any,
    ddf: Any,
    fixed_label: Any = None,
    moving_label: Any = None,
    warped_label: Any = None,
    spacing: Sequence[float] | None = None,
    centre: Sequence[int] | None = None,
    title: str | None = None,
    checker_size: int | None = None,
    grid_step: int | None = None,
    tile_inches: float = 1.45,
    dpi: int = 100,
) -> Any:
    """
    A figure of one registered 3D pair: three rows (:data:`ORIENTATIONS`) by six columns (:data:`PANEL_COLUMNS`):

    - fixed, moving and warped images (grey, the fixed image's 0.5-99.5 percentile range for all three) with the
      boundaries of their label maps (fixed label on the fixed image, moving on the moving, warped on the warped);
    - a checkerboard of the fixed and warped images (aligned edges run straight across the tiles);
    - the deformed grid: the lines of ``p + ddf(p)`` (where each fixed-grid point samples the moving image) over
      the warped image;
    - ``log|J|`` of the ddf (blue: compression, red: expansion, clipped to [-1, 1]) with the folded voxels
      (``|J| <= 0``) in green; the column title gives their percentage over the whole grid.

    All inputs are on the fixed grid (the network grid of the bundle), in RAS order, as ``(*S)``, ``(1, *S)`` or
    ``(1, 1, *S)`` tensors or arrays; the ddf is ``(3, *S)`` or ``(1, 3, *S)`` in voxels (channel i along axis i).

    Args:
        fixed, moving, warped: images; ``moving`` already on the fixed grid (``ResampleToMatchd``).
        ddf: displacement field in voxels, ``warped(p) = moving(p + ddf(p))``.
        fixed_label, moving_label, warped_label: optional integer label maps, drawn as coloured boundaries.
        spacing: voxel size per axis (mm), for the aspect ratio of each slice; default isotropic.
        centre: voxel where the three planes cross; default: the centre of the fixed label (or image).
        title: figure title, e.g. the pair's name and Dice.
        checker_size: checkerboard tile in voxels; default an eighth of the smallest dimension (at least 2).
        grid_step: voxels between deformed-grid lines; default about 20 lines along the longest axis.
        tile_inches: size of one tile; dpi: resolution of the figure.

    Returns:
        a ``matplotlib.figure.Figure`` (Agg canvas), for :py:func:`monai_sacb.visualize.save_figure` or
        :py:func:`monai_sacb.visualize.figure_to_array`.
    """
    from matplotlib.collections import LineCollection

    volumes = {name: as_volume(v, name) for name, v in (("fixed", fixed), ("moving", moving), ("warped", warped))}
    shape = volumes["fixed"].shape
    labels = {
        name: (None if v is None else as_volume(v, name).astype(np.int64))
        for name, v in (("fixed", fixed_label), ("moving", moving_label), ("warped", warped_label))
    }
    for name, v in [*volumes.items(), *labels.items()]:
        if v is not None and v.shape != shape:
            raise ValueError(f"every volume must be on the fixed grid {shape}, {name} has shape {v.shape}.")
    flow = _ddf_array(ddf)
    if flow.shape[1:] != shape:
        raise ValueError(f"ddf must be on the fixed grid {shape}, got spatial shape {flow.shape[1:]}.")
    spacing = [1.0, 1.0, 1.0] if spacing is None else [float(s) for s in spacing]
    centre = slice_centre(volumes["fixed"], labels["fixed"]) if centre is None else tuple(int(c) for c in centre)
    checker = checker_size or max(2, min(shape) // 8)
    step = grid_step or max(2, round(max(shape) / 20))
    vmin, vmax = np.percentile(volumes["fixed"], [0.5, 99.5])
    vmax = vmax if vmax > vmin else vmin + 1.0
    max_label = max([int(v.max()) for v in labels.values() if v is not None] + [1])
    log_j, folded = log_jacobian(flow)
    fold_percent = 100.0 * float(folded.mean())

    heights = [shape[ORIENTATIONS[o][1][1]] * spacing[ORIENTATIONS[o][1][1]] for o in ORIENTATIONS]
    widths = [shape[ORIENTATIONS[o][1][0]] * spacing[ORIENTATIONS[o][1][0]] for o in ORIENTATIONS]
    row_heights = [h / max(widths) for h in heights]
    fig = new_figure((tile_inches * len(PANEL_COLUMNS) + 0.6, tile_inches * sum(row_heights) + 0.7), dpi=dpi)
    grid = fig.add_gridspec(
        len(ORIENTATIONS), len(PANEL_COLUMNS) + 1, height_ratios=row_heights,
        width_ratios=[1.0] * len(PANEL_COLUMNS) + [0.06], left=0.03, right=0.93, bottom=0.01,
        top=1.0 - 0.55 / (tile_inches * sum(row_heights) + 0.7), wspace=0.04, hspace=0.06,
    )  # fmt: skip
    image_kw = {"cmap": "gray", "vmin": vmin, "vmax": vmax, "origin": "lower", "interpolation": "nearest"}
    log_image = None
    for row, (orientation, (axis, (ax_x, ax_y))) in enumerate(ORIENTATIONS.items()):
        index = centre[axis]
        aspect = spacing[ax_y] / spacing[ax_x]
        planes = {name: _plane(v, axis, index) for name, v in volumes.items()}
        for col, column in enumerate(PANEL_COLUMNS):
            ax = fig.add_subplot(grid[row, col])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(column if column != "log|J|" else f"log|J|, folds {fold_percent:.3f}%", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{orientation} {'ijk'[axis]}={index}", fontsize=8)
            if column in volumes:
                ax.imshow(planes[column], aspect=aspect, **image_kw)
                label = labels[column]
                if label is not None:
                    rgba = _contour_rgba(_plane(label, axis, index), max_label)
                    ax.imshow(rgba, aspect=aspect, origin="lower", interpolation="nearest")
            elif column.startswith("checkerboard"):
                ax.imshow(checkerboard(planes["fixed"], planes["warped"], checker), aspect=aspect, **image_kw)
            elif column == "deformed grid":
                ax.set_facecolor("black")
                ax.imshow(planes["warped"], aspect=aspect, alpha=0.5, **image_kw)
                ux, uy = _plane(flow[ax_x], axis, index), _plane(flow[ax_y], axis, index)
                ax.add_collection(LineCollection(_deformed_grid_lines(ux, uy, step), colors="#ffb000", linewidths=0.5))
                ax.set_xlim(-0.5, ux.shape[1] - 0.5)
                ax.set_ylim(-0.5, ux.shape[0] - 0.5)
            else:
                log_image = ax.imshow(
                    _plane(log_j, axis, index), cmap="RdBu_r", vmin=-_LOG_J_RANGE, vmax=_LOG_J_RANGE,
                    aspect=aspect, origin="lower", interpolation="nearest",
                )  # fmt: skip
                fold = _plane(folded, axis, index)
                if fold.any():
                    overlay = np.zeros((*fold.shape, 4), dtype=np.float32)
                    overlay[fold] = _FOLD_COLOUR
                    ax.imshow(overlay, aspect=aspect, origin="lower", interpolation="nearest")
    colourbar_ax = fig.add_subplot(grid[:, -1])
    bar = fig.colorbar(log_image, cax=colourbar_ax)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("log|J| (green: |J|<=0)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
