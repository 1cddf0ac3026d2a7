# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""
Figures without pyplot: each function makes a ``matplotlib.figure.Figure`` drawn by the Agg canvas, so nothing
here selects or changes the process's matplotlib backend (safe in a training run, a server, a test). Matplotlib is
imported when a figure is made, not with the package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai.utils import convert_to_numpy

from monai_sacb.data.utils import atomic_write

__all__ = ["new_figure", "save_figure", "figure_to_array", "as_volume", "label_boundaries", "checkerboard"]


def new_figure(figsize: tuple[float, float], dpi: int = 100) -> Any:
    """An empty ``matplotlib.figure.Figure`` with an Agg canvas attached (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: int | None = None, colours: int | None = 256) -> str:
    """
    Write ``fig`` as a PNG (folders created), atomically: a partly written file never takes the name.

    Args:
        fig: a figure of this package (or any matplotlib figure with a canvas).
        path: the PNG file.
        dpi: resolution; default the figure's.
        colours: an adaptive palette of this many colours (an 8-bit PNG, about a third of the size of a full
            colour one, for figures that go into documentation and TensorBoard); ``None`` keeps full RGB.

    Returns:
        the path written, as a string.
    """
    from PIL import Image

    path = os.fspath(path)
    if dpi is not None and dpi != fig.dpi:
        fig.set_dpi(dpi)
    image = Image.fromarray(figure_to_array(fig))
    if colours:
        image = image.quantize(colors=int(colours), method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="png", optimize=True))
    return path


def figure_to_array(fig: Any) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 RGB array, e.g. for ``SummaryWriter.add_image(dataformats="HWC")``."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def as_volume(data: Any, name: str = "image") -> np.ndarray:
    """
    A 3D numpy array from a (*S), (1, *S) or (1, 1, *S) tensor or array (MetaTensor metadata dropped).

    Raises:
        ValueError: when the data is not one 3D volume.
    """
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
    array = convert_to_numpy(data)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name} must be one 3D volume ((*S), (1, *S) or (1, 1, *S)), got shape {data.shape}.")
    return array


def label_boundaries(label: np.ndarray) -> np.ndarray:
    """
    Boundary of a 2D label map: the labelled pixels (not 0) with a 4-neighbour of another value.

    Returns:
        a bool array of the same shape.
    """
    label = np.asarray(label)
    edge = np.zeros(label.shape, dtype=bool)
    for axis in range(label.ndim):
        diff = np.diff(label, axis=axis) != 0
        lead = [slice(None)] * label.ndim
        lead[axis] = slice(0, -1)
        trail = [slice(None)] * label.ndim
        trail[axis] = slice(1, None)
        edge[tuple(lead)] |= diff
        edge[tuple(trail)] |= diff
    return edge & (label != 0)


def checkerboard(a: np.ndarray, b: np.ndarray, size: int | Sequence[int] = 8) -> np.ndarray:
    """
    Tiles of ``a`` and ``b`` alternating every ``size`` pixels (``a`` in the corner tile).

    Args:
        a, b: arrays of the same shape.
        size: tile size per axis (one number for all).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"checkerboard needs two arrays of one shape, got {a.shape} and {b.shape}.")
    sizes = [int(size)] * a.ndim if np.isscalar(size) else [int(s) for s in size]  # type: ignore[union-attr]
    if len(sizes) != a.ndim or min(sizes) < 1:
        raise ValueError(f"size must be one positive number or {a.ndim} of them, got {size}.")
    parity = sum(np.indices(a.shape)[i] // sizes[i] for i in range(a.ndim)) % 2
    return np.where(parity == 0, a, b)
