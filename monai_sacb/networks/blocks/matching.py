# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from monai_sacb.networks.utils import compiled_cpu_kernels, use_cpu_kernels

__all__ = ["similarity_matching_flow", "SimilarityMatching"]


# float32 elements of one slab of the fixed features in the CPU kernel: small enough that the slab, its shifted
# moving windows and the product stay in a core's cache across the 27 offsets
_SLAB_ELEMENTS = 2**18


def similarity_matching_flow(
    moving: torch.Tensor, fixed: torch.Tensor, subtract_self_match: bool = False
) -> torch.Tensor:
    """
    Parameter-free flow estimate from feature similarity over a 3x3(x3) search window.

    For each voxel p and each offset v in {-1, 0, 1}^d (row-major, "ij" order), the score is the plain dot
    product ``<fixed(p), moving(p + v)>`` over channels (zero outside the grid, no scaling or temperature);
    the flow is the softmax-weighted mean offset ``sum_v softmax(score)_v * v``.
    The 3^d shifted products are reduced over channels one offset at a time, so memory grows with 3^d x N,
    never with 3^d x C x N as an unfolded window would. Computed in at least float32 (autocast-safe).
    Features matched against themselves (the same tensor passed as both arguments, as
    ``SACBNetBackbone(subtract_self_estimate=True)`` does) take half the products: the score of offset -v at p
    is that of offset v at p - v: the same products, whose channel sums can differ from a separate computation
    in the last bit. 3D bfloat16 features on the CPU without gradient (inference under bfloat16 autocast) take
    a compiled kernel where numba is installed (:py:mod:`~monai_sacb.networks.blocks.numba_kernels`): the same
    scores up to float32 rounding of the channel sums and a softmax equal to about 1 ulp, a plane of voxels at a
    time (the 3^d score maps are never stored), in about a fifth of the eager time.

    Args:
        moving: (B, C, *S) moving features, already warped by the current estimate.
        fixed: (B, C, *S) fixed features, same shape.
        subtract_self_match: return ``flow(moving, fixed) - flow(fixed, fixed)``: less what the fixed features
            matched with themselves give (the bias of the unnormalised scores that
            ``SACBNetBackbone(subtract_self_estimate=True)`` removes); features equal to fixed then give zero.

    Returns:
        (B, spatial_dims, *S) displacement in voxels of this grid, channel i along spatial axis i.
    """
    if moving.shape != fixed.shape:
        raise ValueError(f"moving and fixed features must have one shape, got {tuple(moving.shape)} and {tuple(fixed.shape)}.")
    compiled = _compiled_flow(moving, fixed, subtract_self_match)
    if compiled is not None:
        return compiled
    offsets = list(itertools.product((-1, 0, 1), repeat=fixed.ndim - 2))
    with torch.autocast(fixed.device.type, enabled=False):
        prob = torch.softmax(_scores(moving, fixed, offsets), dim=1)  # (B, 3^d, *S)
        vectors = torch.tensor(offsets, dtype=prob.dtype, device=prob.device)  # (3^d, d)
        flow = torch.einsum("bt...,td->bd...", prob, vectors)
    if subtract_self_match:
        flow = flow - similarity_matching_flow(fixed, fixed)
    return flow


def _scores(moving: torch.Tensor, fixed: torch.Tensor, offsets: list[tuple[int, ...]]) -> torch.Tensor:
    """(B, 3^d, *S) scores ``<fixed(p), moving(p + v)>`` in at least float32, offsets in the order given."""
    spatial_dims = fixed.ndim - 2
    spatial_shape = fixed.shape[2:]
    dtype = torch.promote_types(fixed.dtype, torch.float32)
    fixed32 = fixed.to(dtype)
    moving_pad = F.pad(fixed32 if moving is fixed else moving.to(dtype), [1, 1] * spatial_dims)
    windows = [
        (slice(None), slice(None)) + tuple(slice(1 + o, 1 + o + s) for o, s in zip(offset, spatial_shape))
        for offset in offsets
    ]
    # offsets[-1 - i] == -offsets[i]: for a self-match only the first half and the centre are computed
    computed = range(len(offsets) // 2 + 1) if moving is fixed else range(len(offsets))
    needs_grad = torch.is_grad_enabled() and (fixed.requires_grad or moving.requires_grad)
    if needs_grad or not use_cpu_kernels(fixed):
        columns = [(fixed32 * moving_pad[windows[index]]).sum(1) for index in computed]
        if moving is fixed:
            columns += [_shifted(columns[index], offsets[index]) for index in reversed(computed[:-1])]
        scores = torch.stack(columns, dim=1)
    else:  # the same sums, in cache-sized slabs, reusing one product buffer (fresh memory is slow on CPU)
        scores = fixed32.new_empty((fixed.shape[0], len(offsets), *spatial_shape))
        depth = spatial_shape[0]
        step = max(1, min(depth, _SLAB_ELEMENTS // max(1, fixed32[:, :, :1].numel())))
        product = torch.empty_like(fixed32[:, :, :step])
        # every offset's product of one slab while that slab of both feature maps is still in cache
        for start in range(0, depth, step):
            stop = min(start + step, depth)
            block = fixed32[:, :, start:stop]
            for index in computed:
                rows = windows[index][2]
                window = windows[index][:2] + (slice(rows.start + start, rows.start + stop),) + windows[index][3:]
                out = product[:, :, : stop - start]
                torch.sum(torch.mul(block, moving_pad[window], out=out), 1, out=scores[:, index, start:stop])
        if moving is fixed:
            for index in computed[:-1]:
                scores[:, -1 - index].copy_(_shifted(scores[:, index], offsets[index]))
    return scores


def _compiled_flow(moving: torch.Tensor, fixed: torch.Tensor, subtract_self_match: bool) -> torch.Tensor | None:
    """
    The 3D flow of bfloat16 CPU features (those of CPU inference under bfloat16 autocast) from the compiled
    kernel (:py:func:`~monai_sacb.networks.blocks.numba_kernels.bfloat16_matching_flow`); None where it does not
    apply: other dtypes (so float32 results never depend on whether numba is installed), 2D, gradients, or no
    kernels.
    """
    if fixed.ndim != 5 or fixed.dtype != torch.bfloat16 or moving.dtype != torch.bfloat16:
        return None
    kernels = compiled_cpu_kernels(moving, fixed)
    if kernels is None:
        return None
    from monai_sacb.networks.blocks.numba_kernels import bfloat16_matching_flow

    return bfloat16_matching_flow(moving, fixed, subtract_self_match, kernels)


def _shifted(score: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """``score(p - offset)`` for a (B, *S) map, zero where ``p - offset`` is outside the grid."""
    pad = [amount for o in reversed(offset) for amount in (max(o, 0), max(-o, 0))]
    window = tuple(slice(max(-o, 0), max(-o, 0) + size) for o, size in zip(offset, score.shape[1:]))
    return F.pad(score, pad)[(slice(None),) + window]


class SimilarityMatching(nn.Module):
    """Module form of :py:func:`similarity_matching_flow`: ``forward(moving, fixed) -> flow``; no parameters."""

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return similarity_matching_flow(moving, fixed)
