# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Input checks and small helpers shared by the displacement-field and label metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

from monai.data import MetaTensor
from monai.utils import convert_to_tensor

__all__ = ["check_ddf", "spacing_to_tensor", "spacing_from_meta", "evaluation_region"]

# a plain alias is evaluated at import time, so it spells Union for Python 3.9
SpacingLike = Union[float, Sequence[float], Sequence[Sequence[float]], np.ndarray, torch.Tensor]


def check_ddf(ddf: torch.Tensor | np.ndarray) -> torch.Tensor:
    """
    Validate a dense displacement field and return it as a plain floating point tensor.

    Args:
        ddf: displacement field of shape (B, spatial_dims, H, W[, D]) with 2 or 3 spatial dims,
            channel ``i`` holding the displacement along spatial axis ``i``.

    Returns:
        the field as a ``torch.Tensor`` (metadata dropped); half precision and integer inputs become float32.

    Raises:
        ValueError: when the number of dimensions is not 4 or 5, when the channel count differs from the number
            of spatial dims, when a spatial size is below 2 (no finite difference possible), or when the field
            holds NaN or infinite values.
    """
    ddf = convert_to_tensor(ddf, track_meta=False)
    if ddf.ndim not in (4, 5):
        raise ValueError(
            f"ddf must have shape (B, spatial_dims, *spatial) with 2 or 3 spatial dims, got shape {tuple(ddf.shape)}."
        )
    spatial_dims = ddf.ndim - 2
    if ddf.shape[1] != spatial_dims:
        raise ValueError(
            f"ddf has {ddf.shape[1]} channels but {spatial_dims} spatial dims (shape {tuple(ddf.shape)}): "
            "channel i must be the displacement along spatial axis i."
        )
    if min(ddf.shape[2:]) < 2:
        raise ValueError(f"every spatial size of ddf must be at least 2, got shape {tuple(ddf.shape)}.")
    if not ddf.is_floating_point() or ddf.dtype in (torch.float16, torch.bfloat16):
        ddf = ddf.float()
    if torch.isnan(ddf).any():
        raise ValueError("ddf contains NaN values.")
    if torch.isinf(ddf).any():
        raise ValueError("ddf contains infinite values.")
    return ddf


def spacing_to_tensor(spacing: SpacingLike, batch_size: int, spatial_dims: int) -> torch.Tensor:
    """
    Normalise a spacing argument to a (batch_size, spatial_dims) float64 tensor.

    Args:
        spacing: one number (isotropic, every case), a sequence of ``spatial_dims`` numbers (every case), or a
            sequence of ``batch_size`` such sequences (one per case). The same forms as MONAI's ``spacing=``.
        batch_size: number of cases.
        spatial_dims: number of spatial dims.

    Raises:
        ValueError: when the shape fits none of the forms above, or a value is not positive and finite.
    """
    if isinstance(spacing, torch.Tensor):
        s = spacing.detach().to(device="cpu", dtype=torch.float64)
    else:
        s = torch.as_tensor(np.asarray(spacing, dtype=np.float64))
    if s.ndim == 0:
        s = s.expand(batch_size, spatial_dims)
    elif s.ndim == 1 and s.shape[0] == spatial_dims:
        s = s.expand(batch_size, spatial_dims)
    elif s.ndim == 2 and s.shape[0] == batch_size and s.shape[1] in (1, spatial_dims):
        s = s.expand(batch_size, spatial_dims)
    else:
        raise ValueError(
            f"spacing must be a number, {spatial_dims} numbers, or {batch_size} (batch size) sequences of "
            f"{spatial_dims} numbers, got shape {tuple(s.shape)}."
        )
    if not torch.isfinite(s).all() or (s <= 0).any():
        raise ValueError(f"spacing values must be positive and finite, got {s.tolist()}.")
    return s.contiguous()


def spacing_from_meta(img: torch.Tensor) -> list[list[float]] | None:
    """
    Per-case voxel spacing of a MetaTensor, read from its affine (``pixdim``); ``None`` for a plain tensor.

    Args:
        img: a batch-first tensor (B, C, *spatial), possibly a MetaTensor from a batch (``is_batch``) or a
            single case with a batch dimension added.

    Returns:
        a list of B lists of ``len(spatial)`` spacings, or ``None``.
    """
    if not isinstance(img, MetaTensor):
        return None
    spatial_dims = img.ndim - 2
    pixdim = img.pixdim
    per_case = pixdim if isinstance(pixdim, list) else [pixdim] * img.shape[0]
    if len(per_case) != img.shape[0]:
        return None
    return [[float(v) for v in convert_to_tensor(p, track_meta=False).flatten()[:spatial_dims]] for p in per_case]


def evaluation_region(
    shape: Sequence[int], mask: torch.Tensor | None = None, border: int = 0, device: torch.device | None = None
) -> torch.Tensor:
    """
    Boolean region (B, 1, *spatial) over which per-voxel Jacobian statistics are taken.

    Args:
        shape: shape (B, 1, *spatial) of the per-voxel map.
        mask: optional (B, 1, *spatial) map (e.g. a fixed label map); its nonzero voxels are kept.
            A batch size of 1 is broadcast to B.
        border: number of voxels dropped on each side of every spatial axis.
        device: device of the returned region.

    Raises:
        ValueError: when ``border`` is negative or leaves nothing, or ``mask`` does not match ``shape``.
    """
    shape = tuple(shape)
    spatial = shape[2:]
    if border < 0 or any(2 * border >= n for n in spatial):
        raise ValueError(f"border must be >= 0 and leave voxels on every axis of {spatial}, got {border}.")
    region = torch.zeros(shape, dtype=torch.bool, device=device)
    inner = (slice(None), slice(None)) + tuple(slice(border, n - border) for n in spatial)
    region[inner] = True
    if mask is not None:
        mask = convert_to_tensor(mask, track_meta=False).to(device=region.device)
        if mask.ndim != len(shape) or mask.shape[1] != 1 or tuple(mask.shape[2:]) != spatial:
            raise ValueError(
                f"mask must have shape (B, 1, {', '.join(map(str, spatial))}) to match the ddf, "
                f"got {tuple(mask.shape)}."
            )
        if mask.shape[0] not in (1, shape[0]):
            raise ValueError(f"mask batch size {mask.shape[0]} does not match the ddf batch size {shape[0]}.")
        region = region & (mask != 0)
    return region
