# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from monai_sacb.networks.utils import (
    compiled_cpu_kernels,
    deterministic_backward_needed,
    is_exporting,
    use_cpu_kernels,
)

__all__ = ["ddf_sampling_grid", "linear_resize", "resize_ddf", "warp_with_ddf"]

_MODES = ("bilinear", "nearest", "bicubic")


def ddf_sampling_grid(ddf: torch.Tensor) -> torch.Tensor:
    """
    (B, spatial_dims, *S) displacement in voxels -> (B, *S, spatial_dims) ``grid_sample`` grid
    (``align_corners=True``, last spatial axis first), computed as ``(position + ddf) * 2 / (size - 1) - 1``
    in that order, like :py:class:`monai.networks.blocks.Warp`, with a single allocation. Differentiable.
    """
    if not (torch.is_grad_enabled() and ddf.requires_grad) and not is_exporting():
        return _sampling_grid_no_grad(ddf)  # writes into views: kept out of recorded graphs
    spatial_dims, spatial_shape = ddf.shape[1], tuple(ddf.shape[2:])
    grid = torch.stack([ddf[:, axis] for axis in reversed(range(spatial_dims))], dim=-1)
    for axis, size in enumerate(spatial_shape):
        position = torch.arange(size, dtype=grid.dtype, device=grid.device)
        grid[..., spatial_dims - 1 - axis].add_(position.view([size if a == axis else 1 for a in range(spatial_dims)]))
    sizes = [max(size - 1, 1) for size in reversed(spatial_shape)]
    return grid.mul_(2).div_(torch.tensor(sizes, dtype=grid.dtype, device=grid.device)).sub_(1)


def _sampling_grid_no_grad(ddf: torch.Tensor) -> torch.Tensor:
    """
    :py:func:`ddf_sampling_grid` in two passes instead of six (the same values): ``position + ddf`` written
    straight into the grid's layout, then ``2 * x / (size - 1) - 1`` as one ``addcdiv`` (doubling is exact).
    """
    spatial_dims, spatial_shape = ddf.shape[1], tuple(ddf.shape[2:])
    grid = ddf.new_empty((ddf.shape[0], *spatial_shape, spatial_dims))
    for axis, size in enumerate(spatial_shape):
        position = torch.arange(size, dtype=grid.dtype, device=grid.device)
        shape = [size if a == axis else 1 for a in range(spatial_dims)]
        torch.add(ddf[:, axis], position.view(shape), out=grid[..., spatial_dims - 1 - axis])
    sizes = [max(size - 1, 1) for size in reversed(spatial_shape)]
    sizes_tensor = torch.tensor(sizes, dtype=grid.dtype, device=grid.device)
    return torch.addcdiv(grid.new_full((), -1.0), grid, sizes_tensor, value=2, out=grid)


def warp_with_ddf(
    image: torch.Tensor,
    ddf: torch.Tensor,
    padding_mode: str = "zeros",
    mode: str = "bilinear",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Backward warping with a dense displacement field: ``out(p) = image(p + ddf(p))``, sampled with
    ``align_corners=True``. The same function as
    ``monai.networks.blocks.Warp(mode=mode, padding_mode=padding_mode)(image, ddf)``, with the same coordinate
    arithmetic, but one allocation for the sampling grid instead of several (on CPU, fresh memory costs more than
    these element-wise passes) and no cached reference grid to keep on the right device. Every warp of the
    package goes through it.

    Args:
        image: (B, C, *S) tensor, 2 or 3 spatial dimensions, any memory format. A floating image is warped in
            its own dtype, or in float32 if it has less precision (float16, bfloat16: also under
            ``torch.autocast``), and returned in its own dtype; the sampling grid is computed in that dtype too, so
            that half-precision rounding never moves a sampling position. An integer or boolean image (e.g. a
            label map) is warped in the ddf's floating dtype (float32 at least), rounded and returned in its own
            dtype, so that ``"nearest"`` keeps label values exactly.
        ddf: (B, spatial_dims, *S) displacement in voxels, channel i along spatial axis i, on ``image``'s device.
        padding_mode: ``grid_sample`` padding outside the image: "zeros", "border" or "reflection".
        mode: ``grid_sample`` interpolation: "bilinear" ((bi/tri)linear, differentiable), "nearest" (label maps;
            not differentiable) or "bicubic" (2D only, as in PyTorch).
        out: optional (B, C, *S) tensor to write the result into, of any layout and dtype (converted like
            ``out.copy_``), as torch's ``out=``; it may be ``image`` itself (the image is sampled before it is
            overwritten). Not differentiable; meant for inference that reuses memory.

    Returns:
        (B, C, *S) warped image (contiguous), in ``image``'s dtype; or ``out``.

    On CPU (:py:func:`~monai_sacb.networks.utils.use_cpu_kernels`), a single 3D sample is cut into as many slabs
    as there are threads and warped as a batch, since PyTorch's CPU ``grid_sample`` parallelises over the batch
    only (1.7x faster on 2 threads; same values). A differentiable "bilinear" warp on a GPU under
    ``torch.use_deterministic_algorithms(True)`` (:py:func:`~monai_sacb.networks.utils.deterministic_backward_needed`)
    interpolates with gathers instead, whose backward pass is deterministic there (the same values up to
    rounding; more memory and time); "reflection" padding is not offered in that mode.
    """
    spatial_dims = image.ndim - 2
    spatial_shape = tuple(image.shape[2:])
    if spatial_dims not in (2, 3):
        raise ValueError(f"image must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(image.shape)}.")
    expected = (image.shape[0], spatial_dims, *spatial_shape)
    if tuple(ddf.shape) != expected:
        raise ValueError(f"ddf must be {expected} for an image of shape {tuple(image.shape)}, got {tuple(ddf.shape)}.")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
    if out is not None and tuple(out.shape) != tuple(image.shape):
        raise ValueError(f"out must have the image's shape {tuple(image.shape)}, got {tuple(out.shape)}.")
    if not image.is_floating_point():
        if image.is_complex():
            raise ValueError(f"image must be real-valued, got dtype {image.dtype}.")
        dtype = torch.promote_types(ddf.dtype, torch.float32)
        warped = warp_with_ddf(image.to(dtype), ddf.to(dtype), padding_mode, mode).round_()
        return warped.to(image.dtype) if out is None else out.copy_(warped)
    # sampling positions need float32 at least: in bfloat16 a coordinate near 100 is off by up to 0.25 voxel
    dtype = torch.promote_types(image.dtype, torch.float32)
    if mode == "bilinear" and deterministic_backward_needed(image, ddf):
        warped = _linear_sample_by_gathers(image.to(dtype), ddf.to(dtype), padding_mode)
        return warped.to(image.dtype) if out is None else out.copy_(warped)
    kernels = _compiled_sampling(image, ddf, mode, padding_mode, dtype)
    if kernels is not None:
        from monai_sacb.networks.blocks.numba_kernels import trilinear_warp_

        # the kernel reads bfloat16 and rounds into it itself (the same values as converting before and after);
        # a result bound for ``out`` gets out's layout, so that copying it there is a plain copy
        kept = image.dtype if image.dtype == torch.bfloat16 else dtype
        if out is None:
            warped = torch.empty(image.shape, dtype=kept)
        else:
            warped = torch.empty_like(out, dtype=kept if out.dtype == image.dtype else dtype)
        trilinear_warp_(image.to(kept), ddf.to(dtype), warped, padding_mode == "border", kernels)
        return warped.to(image.dtype) if out is None else out.copy_(warped)
    grid = ddf_sampling_grid(ddf.to(dtype))
    chunks = _thread_chunks(image) if use_cpu_kernels(image) else 1
    if chunks == 1:
        warped = F.grid_sample(image.to(dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=True)
        return warped.to(image.dtype) if out is None else out.copy_(warped)
    slabs = _grid_sample_in_slabs(image.to(dtype), grid, mode, padding_mode, chunks)
    if out is None:
        return slabs.transpose(0, 1).reshape(1, image.shape[1], *spatial_shape).to(image.dtype)
    out[0].unflatten(1, (chunks, spatial_shape[0] // chunks)).copy_(slabs.transpose(0, 1))
    return out


def _compiled_sampling(image: torch.Tensor, ddf: torch.Tensor, mode: str, padding_mode: str, dtype: torch.dtype):
    """
    The compiled kernels (:py:mod:`~monai_sacb.networks.blocks.numba_kernels`) where they compute this warp: a
    float32 trilinear 3D warp on CPU with zero or border padding and no gradient; None elsewhere.
    """
    if not (image.ndim == 5 and mode == "bilinear" and padding_mode in ("zeros", "border") and dtype == torch.float32):
        return None
    return compiled_cpu_kernels(image, ddf)


def _thread_chunks(image: torch.Tensor) -> int:
    """
    Into how many slabs along the first spatial axis to cut a single-sample 3D warp on CPU: PyTorch's 3D
    ``grid_sample`` on CPU runs the samples of a batch in parallel but each sample on one thread.
    """
    if image.shape[0] != 1 or image.ndim != 5:
        return 1
    first = image.shape[2]
    return max(k for k in range(1, max(1, torch.get_num_threads()) + 1) if first % k == 0)


def _grid_sample_in_slabs(
    image: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str, chunks: int
) -> torch.Tensor:
    """
    CPU kernel of :py:func:`warp_with_ddf` for one 3D sample: the same values, computed on ``chunks`` threads.
    Returns the (chunks, C, S0 / chunks, ...) slabs, which ``transpose(0, 1)`` puts in the output's order.
    """
    spatial_dims, spatial_shape = image.ndim - 2, tuple(image.shape[2:])
    # the output slabs become a batch over one shared (expanded, not copied) input
    return F.grid_sample(
        image.expand(chunks, *image.shape[1:]),
        grid.view(chunks, spatial_shape[0] // chunks, *spatial_shape[1:], spatial_dims),
        mode=mode,
        padding_mode=padding_mode,
        align_corners=True,
    )


def _linear_sample_by_gathers(image: torch.Tensor, ddf: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """
    ``image(p + ddf(p))`` by (bi/tri)linear interpolation written as one gather and one weight per corner of the
    voxel cell, "zeros" or "border" padding: what ``grid_sample`` computes, with a backward pass of gathers'
    scatter-adds, which ``torch.use_deterministic_algorithms(True)`` makes deterministic on GPUs.
    """
    if padding_mode not in ("zeros", "border"):
        raise ValueError(
            f"padding_mode={padding_mode!r} is not available for differentiable warps on a GPU under "
            "torch.use_deterministic_algorithms(True); use 'zeros' or 'border', or leave deterministic algorithms off."
        )
    batch, channels, spatial_shape = image.shape[0], image.shape[1], tuple(image.shape[2:])
    values = image.reshape(batch, channels, -1)
    lows, fractions = [], []
    for axis, size in enumerate(spatial_shape):
        position = torch.arange(size, dtype=ddf.dtype, device=ddf.device)
        position = ddf[:, axis] + position.view([size if a == axis else 1 for a in range(len(spatial_shape))])
        if padding_mode == "border":
            position = position.clamp(0, size - 1)
        low = position.detach().floor()
        lows.append(low.long())
        fractions.append(position - low)
    warped = None
    for corner in itertools.product((0, 1), repeat=len(spatial_shape)):
        index, weight, inside = None, None, None
        for axis, (size, offset) in enumerate(zip(spatial_shape, corner)):
            coordinate = lows[axis] + offset
            axis_weight = fractions[axis] if offset else 1 - fractions[axis]
            axis_inside = (coordinate >= 0) & (coordinate < size)
            coordinate = coordinate.clamp(0, size - 1)
            index = coordinate if index is None else index * size + coordinate
            weight = axis_weight if weight is None else weight * axis_weight
            inside = axis_inside if inside is None else inside & axis_inside
        weight = weight * inside  # zero padding (border padding: every clamped corner is inside)
        gathered = torch.gather(values, 2, index.reshape(batch, 1, -1).expand(batch, channels, -1))
        term = gathered * weight.reshape(batch, 1, -1)
        warped = term if warped is None else warped + term
    return warped.reshape(image.shape)


def linear_resize(x: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """
    ``F.interpolate(x, size=spatial_size, mode="bilinear"/"trilinear", align_corners=True)``; when autograd will
    differentiate it on a GPU under ``torch.use_deterministic_algorithms(True)``
    (:py:func:`~monai_sacb.networks.utils.deterministic_backward_needed`), where PyTorch's backward refuses to
    run, the same interpolation one axis at a time as two ``index_select`` and a ``lerp`` (same values up to
    rounding).

    Args:
        x: (B, C, *S) tensor, 2 or 3 spatial dimensions.
        spatial_size: the new spatial size.

    Returns:
        (B, C, *spatial_size) tensor.
    """
    size = tuple(int(s) for s in spatial_size)
    if not deterministic_backward_needed(x):
        return F.interpolate(x, size=size, mode="trilinear" if x.ndim == 5 else "bilinear", align_corners=True)
    for axis, (old, new) in enumerate(zip(x.shape[2:], size)):
        if old == new:
            continue
        dim = axis + 2
        position = torch.arange(new, dtype=torch.float64, device=x.device) * ((old - 1) / max(new - 1, 1))
        low = position.floor().clamp(0, max(old - 2, 0)).long()
        high = (low + 1).clamp_max(old - 1)
        shape = [new if d == dim else 1 for d in range(x.ndim)]
        x = torch.lerp(x.index_select(dim, low), x.index_select(dim, high), (position - low).to(x.dtype).view(shape))
    return x


def resize_ddf(ddf: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """
    The same displacement field on a grid of another size spanning the same extent (``align_corners=True``):
    values are (bi/tri)linearly interpolated with ``align_corners=True`` and channel ``i`` is multiplied by
    ``(m_i - 1) / (n_i - 1)``, because a displacement of ``d`` voxels of a grid of ``n_i`` voxels is
    ``d * (m_i - 1) / (n_i - 1)`` voxels of a grid of ``m_i`` voxels over the same extent.

    The map is exact for affine fields (linear interpolation reproduces them), so an affine field taken to a
    coarse grid and back is unchanged up to rounding; a general field loses its details finer than the coarse grid.

    Args:
        ddf: (B, spatial_dims, *S) displacement in voxels of S, channel ``i`` along spatial axis ``i``.
        spatial_size: the new spatial size, ``spatial_dims`` integers, each >= 2 (as is every size of ``S``).

    Returns:
        (B, spatial_dims, *spatial_size) displacement in voxels of ``spatial_size``; ``ddf`` itself when the
        size is unchanged. Differentiable.
    """
    spatial_dims = ddf.ndim - 2
    old, new = tuple(int(s) for s in ddf.shape[2:]), tuple(int(s) for s in spatial_size)
    if spatial_dims not in (2, 3) or ddf.shape[1] != spatial_dims or len(new) != spatial_dims:
        raise ValueError(
            f"expecting a ddf of shape (B, spatial_dims, *spatial) with 2 or 3 spatial dims and a spatial_size of "
            f"spatial_dims sizes, got ddf {tuple(ddf.shape)} and spatial_size {new}."
        )
    if min(old) < 2 or min(new) < 2:
        raise ValueError(f"every spatial size must be >= 2 to rescale a ddf, got {old} -> {new}.")
    if old == new:
        return ddf
    out = linear_resize(ddf, new)
    scale = torch.tensor([(m - 1) / (n - 1) for n, m in zip(old, new)], dtype=out.dtype, device=out.device)
    return out * scale.view(1, spatial_dims, *([1] * spatial_dims))
