# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Optional compiled CPU kernels, written with `Numba <https://numba.pydata.org>`_ (``pip install numba``, part of the
``dev`` and ``fast`` extras), for inference, where eager PyTorch either makes one pass over memory per operation or
runs as many small operations:

- a trilinear warp about twice as fast as PyTorch's CPU ``grid_sample`` for multi-channel features, with its
  arithmetic (the same bits), float32;
- for bfloat16 tensors (inference under CPU bfloat16 autocast): the instance norm + LeakyReLU, read once per pass;
  the similarity matching, each feature map read once instead of converted and shifted 27 times, its scores,
  softmax and mean offset one plane of voxels at a time (with the self-match subtracted in the same pass); the local
  mean of the k-means descriptors, rounded once; k-means itself, one call per block instead of about a hundred
  small operations; and the SAC block's output (each voxel's cluster gathered, activated and added to the input in
  one pass, the same bits). Most sum in other orders than the eager code (results equal up to rounding), so float32
  results never depend on whether numba is installed.

The eager formulation stays the fallback and the reference; the callers decide where these apply
(:py:func:`numba_kernels`) and import this module only then, since importing numba takes a few tenths of a second.
Compiled on first use and cached on disk (about 20 s once per installation on a 2-core CPU, then a few tenths of a
second per process).
``MONAI_SACB_NUMBA=0`` in the environment turns them off.
"""

from __future__ import annotations

import functools
import os
import threading
from types import SimpleNamespace

import numpy as np
import torch

try:
    import numba
    from llvmlite import ir as llvm_ir
    from numba.core import types as numba_types
    from numba.extending import intrinsic, overload
except ImportError:  # optional: the callers fall back to eager PyTorch
    numba = None

__all__ = [
    "numba_kernels",
    "bfloat16_instance_norm_leaky_relu_",
    "trilinear_warp_",
    "bfloat16_matching_flow",
    "bfloat16_kmeans",
    "bfloat16_local_mean",
    "bfloat16_select_activate_add",
    "bfloat16_average_pool_twice",
    "float32_upsample_twice",
]

# work items per sample for the threads: small enough to balance, large enough to stream a few MB each
_BLOCKS_PER_SAMPLE = 32


def numba_kernels() -> SimpleNamespace | None:
    """
    The compiled kernels, for calls from the main thread of the main process; None without numba, with the
    environment variable ``MONAI_SACB_NUMBA=0``, in other threads (e.g. MONAI's ``ThreadDataLoader``) and in
    ``DataLoader`` worker processes: Numba's threading layers are not all thread-safe, and GNU OpenMP's is not
    safe in a child forked after the parent used it. There the eager PyTorch code runs.
    """
    if numba is None or os.environ.get("MONAI_SACB_NUMBA", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if threading.current_thread() is not threading.main_thread() or torch.utils.data.get_worker_info() is not None:
        return None
    return _KERNELS


if numba is not None:
    _jit = functools.partial(numba.njit, cache=True, nogil=True)

    @_jit(inline="always")
    def _rounded_to_bfloat16(u):
        """float32 bits u -> the bits of the nearest bfloat16, ties to even (PyTorch's float32 -> bfloat16)."""
        return np.uint16((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16)

    @intrinsic
    def _float32_from_bits(typingctx, bits):
        """The float32 whose bits are the uint32 ``bits`` (a register move, no memory)."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_ir.FloatType())

        return numba_types.float32(numba_types.uint32), codegen

    @intrinsic
    def _bits_of_float32(typingctx, value):
        """The uint32 bits of the float32 ``value``."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_ir.IntType(32))

        return numba_types.uint32(numba_types.float32), codegen

    @_jit(inline="always")
    def _bfloat16_value(bits):
        """The float32 value of bfloat16 bits (uint16): bfloat16 is the upper half of a float32, so exact."""
        return _float32_from_bits(np.uint32(bits) << np.uint32(16))

    def _as_float32(element):
        """An array element as float32: a float32 as it is, a uint16 as the bfloat16 whose bits it holds (exact)."""

    @overload(_as_float32, inline="always")
    def _as_float32_overload(element):
        if element == numba_types.uint16:
            return lambda element: _bfloat16_value(element)
        return lambda element: element

    def _in_dtype_of(array, value):
        """A float32 value as an element of ``array``: itself, or the bits of the nearest bfloat16 for uint16."""

    @overload(_in_dtype_of, inline="always")
    def _in_dtype_of_overload(array, value):
        if array.dtype == numba_types.uint16:
            return lambda array, value: _rounded_to_bfloat16(_bits_of_float32(value))
        return lambda array, value: value

    # rows summed in float32 before each float64 addition: 32 rows hold 256 or more values of a channel
    _ROWS_PER_PARTIAL_SUM = 32

    @_jit(parallel=True, error_model="numpy")
    def _shifted_sums(rows, channels, num_blocks):
        """
        rows (G, N, R) bfloat16 bits, R = repeats * channels -> the per-channel shift k (the mean of about 64
        spread rows, near enough to the mean for the sums not to cancel; (G, R) float32) and the sums of (x - k)
        and (x - k)^2 per block and column (G, blocks, 2, R),
        float64 sums of float32 partial sums over 32 rows (relative error about 1e-7 of the partial sums).
        """
        groups, num_rows, width = rows.shape
        step = max(1, num_rows // 64)
        shift = np.zeros((groups, width), np.float32)
        for g in range(groups):
            total = np.zeros(channels, np.float64)
            count = 0
            for i in range(0, num_rows, step):
                row = rows[g, i]
                for r in range(0, width, channels):
                    for c in range(channels):
                        total[c] += _bfloat16_value(row[r + c])
                count += width // channels
            for j in range(width):
                shift[g, j] = total[j % channels] / count
        sums = np.zeros((groups, num_blocks, 2, width), np.float64)
        per_block = (num_rows + num_blocks - 1) // num_blocks
        for task in numba.prange(groups * num_blocks):
            g, block = task // num_blocks, task % num_blocks
            first, second, k = sums[g, block, 0], sums[g, block, 1], shift[g]
            partial_first, partial_second = np.empty(width, np.float32), np.empty(width, np.float32)
            stop = min(num_rows, (block + 1) * per_block)
            for start in range(block * per_block, stop, _ROWS_PER_PARTIAL_SUM):
                partial_first[:] = 0
                partial_second[:] = 0
                for i in range(start, min(stop, start + _ROWS_PER_PARTIAL_SUM)):
                    row = rows[g, i]
                    for j in range(width):
                        v = _bfloat16_value(row[j]) - k[j]
                        partial_first[j] += v
                        partial_second[j] += v * v
                for j in range(width):
                    first[j] += partial_first[j]
                    second[j] += partial_second[j]
        return shift, sums

    @_jit(parallel=True)
    def _normalise_(rows, mean, scale, negative_slope, num_blocks):
        """rows (G, N, R) bfloat16 bits <- bfloat16(leaky_relu((x - mean) * scale)), mean/scale (G, R) float32."""
        groups, num_rows, width = rows.shape
        per_block = (num_rows + num_blocks - 1) // num_blocks
        for task in numba.prange(groups * num_blocks):
            g, block = task // num_blocks, task % num_blocks
            m, s = mean[g], scale[g]
            for i in range(block * per_block, min(num_rows, (block + 1) * per_block)):
                row = rows[g, i]
                for j in range(width):
                    y = (_bfloat16_value(row[j]) - m[j]) * s[j]
                    row[j] = _rounded_to_bfloat16(_bits_of_float32(y if y > 0 else y * negative_slope))

    @_jit(inline="always")
    def _cell_sum(image, b, z0, y0, x0, c, tnw, tne, tsw, tse, bnw, bne, bsw, bse):
        """Weighted sum of channel c over the eight corners of the cell from (z0, y0, x0), in grid_sample's order."""
        z1, y1, x1 = z0 + 1, y0 + 1, x0 + 1
        value = np.float32(0)
        value += _as_float32(image[b, z0, y0, x0, c]) * tnw
        value += _as_float32(image[b, z0, y0, x1, c]) * tne
        value += _as_float32(image[b, z0, y1, x0, c]) * tsw
        value += _as_float32(image[b, z0, y1, x1, c]) * tse
        value += _as_float32(image[b, z1, y0, x0, c]) * bnw
        value += _as_float32(image[b, z1, y0, x1, c]) * bne
        value += _as_float32(image[b, z1, y1, x0, c]) * bsw
        value += _as_float32(image[b, z1, y1, x1, c]) * bse
        return value

    @_jit(parallel=True, error_model="numpy")
    def _trilinear_warp(image, ddf, out, border):
        """
        out[b, z, y, x, c] = image trilinearly sampled at (z, y, x) + ddf[b, :, z, y, x] (voxels), the position taken
        through ``warp.ddf_sampling_grid``'s normalisation to [-1, 1] and PyTorch's CPU ``grid_sample``
        (align_corners) back, with the same float32 operations in the same order, so the same float32 values as
        ``grid_sample`` on that grid: image (B, D, H, W, C), ddf (B, 3, D, H, W), out (B, D, H, W, C), any strides.
        Zero padding, or border padding (positions clipped to the volume) with ``border``. image and out hold
        float32 values or bfloat16 bits (uint16), each independently: a bfloat16 image is read exactly as float32,
        and the float32 result rounded to bfloat16 for a bfloat16 out, as PyTorch converts it.
        """
        batch, depth, height, width, channels = image.shape
        size_x, size_y, size_z = np.float32(width - 1), np.float32(height - 1), np.float32(depth - 1)
        # the grid's divisors, max(size - 1, 1)
        norm_x, norm_y, norm_z = max(size_x, np.float32(1)), max(size_y, np.float32(1)), max(size_z, np.float32(1))
        one, two, zero = np.float32(1), np.float32(2), np.float32(0)
        for task in numba.prange(batch * depth):
            b, z = task // depth, task % depth
            row_x, row_y, row_z = np.empty(width, np.float32), np.empty(width, np.float32), np.empty(width, np.float32)
            for y in range(height):
                # a row's positions first, in a loop of its own that compiles to vector code (three divisions each)
                ddf_x, ddf_y, ddf_z = ddf[b, 2, z, y], ddf[b, 1, z, y], ddf[b, 0, z, y]
                for x in range(width):
                    # grid = 2 * (position + ddf) / (size - 1) - 1, then grid_sample's ((grid + 1) / 2) * (size - 1)
                    gx = two * (ddf_x[x] + np.float32(x)) / norm_x - one
                    gy = two * (ddf_y[x] + np.float32(y)) / norm_y - one
                    gz = two * (ddf_z[x] + np.float32(z)) / norm_z - one
                    row_x[x] = ((gx + one) / two) * size_x
                    row_y[x] = ((gy + one) / two) * size_y
                    row_z[x] = ((gz + one) / two) * size_z
                    if border:
                        row_x[x] = min(size_x, max(row_x[x], zero))
                        row_y[x] = min(size_y, max(row_y[x], zero))
                        row_z[x] = min(size_z, max(row_z[x], zero))
                for x in range(width):
                    ix, iy, iz = row_x[x], row_y[x], row_z[x]
                    fx, fy, fz = np.floor(ix), np.floor(iy), np.floor(iz)
                    x0, y0, z0 = np.int64(fx), np.int64(fy), np.int64(fz)
                    x1, y1, z1 = x0 + 1, y0 + 1, z0 + 1
                    gx, gy, gz = np.float32(x1), np.float32(y1), np.float32(z1)
                    # PyTorch's corner names: t/b the lower/upper z, n/s the lower/upper y, w/e the lower/upper x
                    tnw = (gx - ix) * (gy - iy) * (gz - iz)
                    tne = (ix - fx) * (gy - iy) * (gz - iz)
                    tsw = (gx - ix) * (iy - fy) * (gz - iz)
                    tse = (ix - fx) * (iy - fy) * (gz - iz)
                    bnw = (gx - ix) * (gy - iy) * (iz - fz)
                    bne = (ix - fx) * (gy - iy) * (iz - fz)
                    bsw = (gx - ix) * (iy - fy) * (iz - fz)
                    bse = (ix - fx) * (iy - fy) * (iz - fz)
                    in_x0, in_x1 = 0 <= x0 < width, 0 <= x1 < width
                    in_y0, in_y1 = 0 <= y0 < height, 0 <= y1 < height
                    in_z0, in_z1 = 0 <= z0 < depth, 0 <= z1 < depth
                    if in_x0 and in_x1 and in_y0 and in_y1 and in_z0 and in_z1:  # inside: no tests per channel
                        if channels == 1:  # an image: without the channel loop, a third faster
                            value = _cell_sum(image, b, z0, y0, x0, 0, tnw, tne, tsw, tse, bnw, bne, bsw, bse)
                            out[b, z, y, x, 0] = _in_dtype_of(out, value)
                            continue
                        for c in range(channels):
                            value = _cell_sum(image, b, z0, y0, x0, c, tnw, tne, tsw, tse, bnw, bne, bsw, bse)
                            out[b, z, y, x, c] = _in_dtype_of(out, value)
                        continue
                    for c in range(channels):
                        value = zero
                        if in_z0 and in_y0 and in_x0:
                            value += _as_float32(image[b, z0, y0, x0, c]) * tnw
                        if in_z0 and in_y0 and in_x1:
                            value += _as_float32(image[b, z0, y0, x1, c]) * tne
                        if in_z0 and in_y1 and in_x0:
                            value += _as_float32(image[b, z0, y1, x0, c]) * tsw
                        if in_z0 and in_y1 and in_x1:
                            value += _as_float32(image[b, z0, y1, x1, c]) * tse
                        if in_z1 and in_y0 and in_x0:
                            value += _as_float32(image[b, z1, y0, x0, c]) * bnw
                        if in_z1 and in_y0 and in_x1:
                            value += _as_float32(image[b, z1, y0, x1, c]) * bne
                        if in_z1 and in_y1 and in_x0:
                            value += _as_float32(image[b, z1, y1, x0, c]) * bsw
                        if in_z1 and in_y1 and in_x1:
                            value += _as_float32(image[b, z1, y1, x1, c]) * bse
                        out[b, z, y, x, c] = _in_dtype_of(out, value)

    @_jit(parallel=True)
    def _channel_planes(features, planes):
        """features (B, D, H, W, C) bfloat16 bits -> planes (B, D, C, H * W) float32 bits (exact): one channel's
        plane of H x W values contiguous, so that the products below run along whole planes."""
        batch, depth, height, width, channels = features.shape
        for task in numba.prange(batch * depth):
            b, z = task // depth, task % depth
            for y in range(height):
                for x in range(width):
                    for c in range(channels):
                        planes[b, z, c, y * width + x] = np.uint32(features[b, z, y, x, c]) << 16

    @_jit(inline="always")
    def _plane_scores(moving, fixed, b, z, width, scores):
        """
        scores[k, p] <- sum over c of fixed[b, z, c, p] * moving[b, z + dz, c, p + dy * W + dx] for one plane of
        voxels p = y * W + x, zero where the neighbour is off the grid; (dz, dy, dx) the k-th offset of {-1, 0, 1}^3
        in row-major order. moving and fixed (B, D, C, H * W) float32 planes, scores (27, H * W); float32 sums in
        channel order. Each product runs along the whole plane (long vector loops); a shift by dx wraps into the
        neighbouring row at the first or last column, whose scores are set to zero afterwards.
        """
        depth, channels, plane = fixed.shape[1:]
        height = plane // width
        k = 0
        for dz in range(-1, 2):
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    total = scores[k]
                    total[:] = 0
                    if 0 <= z + dz < depth:
                        shift = dy * width + dx
                        first = max(max(0, -dy) * width, -shift)
                        last = min(min(height, height - dy) * width, plane - shift)
                        part = total[first:last]
                        for c in range(channels):
                            centre = fixed[b, z, c, first:last]
                            neighbour = moving[b, z + dz, c, first + shift : last + shift]
                            for p in range(last - first):
                                part[p] += centre[p] * neighbour[p]
                        if dx != 0:
                            column = 0 if dx < 0 else width - 1
                            for y in range(height):
                                total[y * width + column] = 0
                    k += 1

    # exp(x) = 2^n exp(r), x = n ln 2 + r: ln 2 split in two (the first part exact in float32 products with small
    # n) and the Taylor-like minimax polynomial of exp on |r| <= ln(2) / 2, as in Cephes' expf (about 1 ulp)
    _LOG2_E = np.float32(1.4426950408889634)
    _LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)
    _EXP_COEFFICIENTS = (
        np.float32(1.9875691500e-4),
        np.float32(1.3981999507e-3),
        np.float32(8.3334519073e-3),
        np.float32(4.1665795894e-2),
        np.float32(1.6666665459e-1),
        np.float32(5.0000001201e-1),
    )

    @_jit(inline="always")
    def _exp_of_nonpositive(x):
        """exp(x) for float32 x <= 0, to about 1 ulp (below -87, exp(-87) ~ 1.6e-38), as arithmetic that vectorises."""
        x = max(x, np.float32(-87))
        n = np.floor(x * _LOG2_E + np.float32(0.5))
        r = x - n * _LN2_HIGH - n * _LN2_LOW
        c0, c1, c2, c3, c4, c5 = _EXP_COEFFICIENTS
        p = (((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5) * r * r + r + np.float32(1)
        return p * _float32_from_bits(np.uint32(np.int32(n) + np.int32(127)) << np.uint32(23))

    @_jit(inline="always")
    def _add_expected_offsets(scores, sign, largest, weights, sums, flow_z, flow_y, flow_x):
        """
        flow_* (N,) += sign * sum over k of softmax(scores[:, p])_k * (dz, dy, dx)_k, from scores (27, N); largest
        and weights (N,) and sums (3, N) are work space.
        """
        count = scores.shape[1]
        largest[:] = scores[0]
        for k in range(1, 27):
            row = scores[k]
            for p in range(count):
                largest[p] = max(largest[p], row[p])
        weights[:] = 0
        sums[:] = 0
        sum_z, sum_y, sum_x = sums[0], sums[1], sums[2]
        for k in range(27):
            row = scores[k]
            dz, dy, dx = np.float32(k // 9 - 1), np.float32((k // 3) % 3 - 1), np.float32(k % 3 - 1)
            for p in range(count):
                e = _exp_of_nonpositive(row[p] - largest[p])
                weights[p] += e
                sum_z[p] += e * dz
                sum_y[p] += e * dy
                sum_x[p] += e * dx
        for p in range(count):
            scale = sign / weights[p]
            flow_z[p] += sum_z[p] * scale
            flow_y[p] += sum_y[p] * scale
            flow_x[p] += sum_x[p] * scale

    @_jit(parallel=True, error_model="numpy")
    def _neighbour_flow(moving, fixed, width, subtract_self, flow):
        """
        flow (B, 3, D, H * W) float32 <- the matching flow of moving and fixed (B, D, C, H * W) float32 planes: per
        voxel, the softmax over the 27 neighbour scores (``_plane_scores``) of the offsets' mean, less that of fixed
        matched with itself where ``subtract_self``. One plane of scores at a time, never the whole (B, 27, *S) map.
        """
        batch, depth, channels, plane = fixed.shape
        for task in numba.prange(batch * depth):
            b, z = task // depth, task % depth
            scores = np.empty((27, plane), np.float32)
            largest, weights = np.empty(plane, np.float32), np.empty(plane, np.float32)
            sums = np.empty((3, plane), np.float32)
            flow_z, flow_y, flow_x = flow[b, 0, z], flow[b, 1, z], flow[b, 2, z]
            flow_z[:] = 0
            flow_y[:] = 0
            flow_x[:] = 0
            _plane_scores(moving, fixed, b, z, width, scores)
            _add_expected_offsets(scores, np.float32(1), largest, weights, sums, flow_z, flow_y, flow_x)
            if subtract_self:
                _plane_scores(fixed, fixed, b, z, width, scores)
                _add_expected_offsets(scores, np.float32(-1), largest, weights, sums, flow_z, flow_y, flow_x)

    @_jit
    def _round_to_bfloat16(value):
        """bits of the float32 ``value`` rounded to the nearest bfloat16, ties to even (PyTorch's conversion)."""
        if value != value:
            return np.uint16(0x7FC0)  # NaN stays NaN (rounding its bits could carry into infinity)
        return _rounded_to_bfloat16(_bits_of_float32(value))

    @_jit(parallel=True, error_model="numpy")
    def _local_mean(features, out):
        """
        out (B, D, H, W, C) <- the mean over each voxel's 3x3x3 neighbourhood (zero padded, divisor 27) of features
        (B, D, H, W, C), both bfloat16 bits: float32 sums, one rounding to bfloat16. Separable: the three planes
        summed, then the three rows, then the three columns, channels innermost.
        """
        batch, depth, height, width, channels = features.shape
        for task in numba.prange(batch * depth):
            b, z = task // depth, task % depth
            plane = np.zeros((height, width * channels), np.float32)
            bits = np.empty(width * channels, np.uint32)
            values = bits.view(np.float32)
            for zz in range(max(0, z - 1), min(depth, z + 2)):
                for y in range(height):
                    for x in range(width):
                        for c in range(channels):
                            bits[x * channels + c] = np.uint32(features[b, zz, y, x, c]) << 16
                    row = plane[y]
                    for j in range(width * channels):
                        row[j] += values[j]
            rows = np.empty((width + 2) * channels, np.float32)  # one row summed over y, zero columns either side
            inverse = np.float32(1) / np.float32(27)
            for y in range(height):
                rows[:] = 0
                inner = rows[channels : channels + width * channels]
                for yy in range(max(0, y - 1), min(height, y + 2)):
                    source = plane[yy]
                    for j in range(width * channels):
                        inner[j] += source[j]
                for x in range(width):
                    for c in range(channels):
                        j = x * channels + c
                        total = rows[j] + rows[j + channels] + rows[j + 2 * channels]
                        out[b, z, y, x, c] = _round_to_bfloat16(total * inverse)

    @_jit(parallel=True, error_model="numpy")
    def _select_activate_add(stacked, assignments, residual, out, negative_slope):
        """
        out[n, c] <- residual[n, c] + leaky_relu(stacked[n, assignments[n] * C + c]), every operation rounded to
        bfloat16 as PyTorch's eager bfloat16 ops round; stacked (N, K * C), residual and out (N, C) bfloat16 bits.
        """
        num_voxels, channels = out.shape
        per_block = (num_voxels + _BLOCKS_PER_SAMPLE - 1) // _BLOCKS_PER_SAMPLE
        for block in numba.prange(_BLOCKS_PER_SAMPLE):
            for n in range(block * per_block, min(num_voxels, (block + 1) * per_block)):
                first = assignments[n] * channels
                for c in range(channels):
                    value = _bfloat16_value(stacked[n, first + c])
                    if not value > 0:
                        value = _bfloat16_value(_rounded_to_bfloat16(_bits_of_float32(value * negative_slope)))
                    total = _bfloat16_value(residual[n, c]) + value
                    out[n, c] = _rounded_to_bfloat16(_bits_of_float32(total))

    # points of k-means handled per step: their float32 coordinates, one row per channel, stay in L1 cache
    _KMEANS_CHUNK = 256

    @_jit(error_model="numpy")
    def _nearest_centres(rows, first, count, centres, centre_norms, best, labels):
        """
        labels[i] = the lowest j minimising |c_j|^2 - 2 <x_i, c_j> (float32; the squared distance less |x_i|^2) and
        best[i] that minimum, for the ``count`` points from ``first`` of C-contiguous rows (C, n) float32, one row
        per channel (whole rows passed, so that their slices stay contiguous and the loops vector code).
        """
        channels, num_centres = rows.shape[0], centres.shape[0]
        dot = np.empty(count, np.float32)
        for j in range(num_centres):
            dot[:] = 0
            for d in range(channels):
                row, weight = rows[d, first : first + count], centres[j, d]
                for i in range(count):
                    dot[i] += row[i] * weight
            for i in range(count):
                score = centre_norms[j] - np.float32(2) * dot[i]
                if j == 0 or score < best[i]:
                    best[i] = score
                    labels[i] = j

    @_jit(error_model="numpy")
    def _squared_norms(centres, out):
        for j in range(centres.shape[0]):
            total = np.float32(0)
            for d in range(centres.shape[1]):
                total += centres[j, d] * centres[j, d]
            out[j] = total

    @_jit(parallel=True, error_model="numpy")
    def _kmeans(points, subset, draws, num_iters, centres_out, labels_out):
        """
        ``kmeans.batched_kmeans`` for points (B, N, C) bfloat16 bits, one sample per thread: k-means++ on the points
        ``subset`` (n,) with the uniform ``draws`` (K,) float64, ``num_iters`` Lloyd iterations (cluster sums in
        float64), then every point assigned; centres_out (B, K, C) float32, labels_out (B, N) int64.
        """
        batch, num_points, channels = points.shape
        num_centres, n = draws.shape[0], subset.shape[0]
        for b in numba.prange(batch):
            bits = np.empty((n, channels), np.uint32)
            for i in range(n):
                for d in range(channels):
                    bits[i, d] = np.uint32(points[b, subset[i], d]) << 16
            x = bits.view(np.float32)  # (n, C): the cluster sums read points whole
            rows = np.ascontiguousarray(x.T)  # (C, n): the distances run along rows
            norms = np.zeros(n, np.float32)
            for d in range(channels):
                for i in range(n):
                    norms[i] += rows[d, i] * rows[d, i]
            # k-means++ by inverse-CDF sampling of the float64 cumulative squared distances
            centres = np.empty((num_centres, channels), np.float32)
            nearest = np.empty(n, np.float32)
            dot = np.empty(n, np.float32)
            for j in range(num_centres):
                if j == 0:
                    index = min(np.int64(draws[0] * n), n - 1)
                else:
                    total = 0.0
                    for i in range(n):
                        total += np.float64(nearest[i]) + 1e-30
                    target, running, index = draws[j] * total, 0.0, 0
                    for i in range(n):
                        running += np.float64(nearest[i]) + 1e-30
                        if running > target:
                            index = i
                            break
                centres[j] = x[index]
                centre_norm = np.float32(0)
                for d in range(channels):
                    centre_norm += centres[j, d] * centres[j, d]
                dot[:] = 0
                for d in range(channels):
                    row, weight = rows[d], centres[j, d]
                    for i in range(n):
                        dot[i] += row[i] * weight
                for i in range(n):
                    distance = max(np.float32(0), norms[i] - np.float32(2) * dot[i] + centre_norm)
                    if j == 0 or distance < nearest[i]:
                        nearest[i] = distance
            # Lloyd iterations; a cluster without points keeps its centre
            centre_norms = np.empty(num_centres, np.float32)
            best = np.empty(n, np.float32)
            labels = np.empty(n, np.int64)
            sums = np.empty((num_centres, channels), np.float64)
            counts = np.empty(num_centres, np.int64)
            for _ in range(num_iters):
                _squared_norms(centres, centre_norms)
                for first in range(0, n, _KMEANS_CHUNK):
                    last = min(n, first + _KMEANS_CHUNK)
                    _nearest_centres(rows, first, last - first, centres, centre_norms, best[first:last], labels[first:last])
                sums[:] = 0
                counts[:] = 0
                for i in range(n):
                    j = labels[i]
                    counts[j] += 1
                    for d in range(channels):
                        sums[j, d] += x[i, d]
                for j in range(num_centres):
                    if counts[j]:
                        for d in range(channels):
                            centres[j, d] = np.float32(sums[j, d] / counts[j])
            centres_out[b] = centres
            # every point to its nearest final centre, a chunk at a time
            _squared_norms(centres, centre_norms)
            chunk_bits = np.empty((channels, _KMEANS_CHUNK), np.uint32)
            chunk = chunk_bits.view(np.float32)
            chunk_best = np.empty(_KMEANS_CHUNK, np.float32)
            for first in range(0, num_points, _KMEANS_CHUNK):
                last = min(num_points, first + _KMEANS_CHUNK)
                for i in range(first, last):
                    for d in range(channels):
                        chunk_bits[d, i - first] = np.uint32(points[b, i, d]) << 16
                _nearest_centres(chunk, 0, last - first, centres, centre_norms, chunk_best, labels_out[b, first:last])

    @_jit(parallel=True, error_model="numpy")
    def _average_pool_twice(x, out):
        """
        out (B, D // 2, H // 2, W // 2, C) <- the mean of each 2x2x2 cell of x (B, D, H, W, C), both bfloat16 bits
        with channels innermost: the eight values summed in float32 (exact for bfloat16 values of similar
        magnitude), halved three times, rounded once. Odd sizes drop their last row, as ``avg_pool3d`` does.
        """
        batch, depth, height, width, channels = out.shape
        eighth = np.float32(0.125)
        for task in numba.prange(batch * depth):
            b, z = task // depth, task % depth
            sums = np.empty((2 * width, channels), np.float32)
            for y in range(height):
                sums[:] = 0
                for dz in range(2):
                    for dy in range(2):
                        source = x[b, 2 * z + dz, 2 * y + dy]
                        for i in range(2 * width):
                            for c in range(channels):
                                sums[i, c] += _bfloat16_value(source[i, c])
                target = out[b, z, y]
                for i in range(width):
                    for c in range(channels):
                        mean = (sums[2 * i, c] + sums[2 * i + 1, c]) * eighth
                        target[i, c] = _rounded_to_bfloat16(_bits_of_float32(mean))

    @_jit(inline="always")
    def _align_corners_scale(size, out_size):
        """Input voxels per output voxel with align_corners, as PyTorch computes it (in float32)."""
        return np.float32(size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)

    @_jit(inline="always")
    def _linear_source(scale, index, size):
        """align_corners source of an output index: the lower input index, the upper one and the upper weight."""
        position = scale * np.float32(index)
        low = min(np.int64(np.floor(position)), size - 1)
        weight = min(max(position - np.float32(low), np.float32(0)), np.float32(1))
        return low, low + (1 if low < size - 1 else 0), weight

    # fused multiply-adds where PyTorch's compiled kernel has them: the same values as F.interpolate on the CPUs
    # seen (Xeon with AVX-512); only bfloat16 inference uses it, so float32 results never depend on it
    @_jit(parallel=True, error_model="numpy", fastmath={"contract"})
    def _upsample_twice(x, out, factor):
        """
        out (B, C, D', H', W') <- factor * trilinear interpolation of x (B, C, D, H, W) with ``align_corners=True``,
        float32, contiguous: ``F.interpolate(factor * x, size=out.shape[2:], mode="trilinear", align_corners=True)``
        in PyTorch's order (linear along the last axis, then the one before, then the first).
        """
        batch, channels, depth, height, width = x.shape
        out_depth, out_height, out_width = out.shape[2:]
        scale_z, scale_y = _align_corners_scale(depth, out_depth), _align_corners_scale(height, out_height)
        scale_x = _align_corners_scale(width, out_width)
        low_x, high_x = np.empty(out_width, np.int64), np.empty(out_width, np.int64)
        weight_x = np.empty(out_width, np.float32)
        for i in range(out_width):
            low_x[i], high_x[i], weight_x[i] = _linear_source(scale_x, i, width)
        for task in numba.prange(batch * channels * out_depth):
            b, c, z = task // (channels * out_depth), (task // out_depth) % channels, task % out_depth
            z0, z1, wz = _linear_source(scale_z, z, depth)
            for y in range(out_height):
                y0, y1, wy = _linear_source(scale_y, y, height)
                near_low, near_high = x[b, c, z0, y0], x[b, c, z0, y1]
                far_low, far_high = x[b, c, z1, y0], x[b, c, z1, y1]
                row = out[b, c, z, y]
                for i in range(out_width):
                    j0, j1, wx = low_x[i], high_x[i], weight_x[i]
                    vx = np.float32(1) - wx
                    near = (np.float32(1) - wy) * (vx * near_low[j0] + wx * near_low[j1]) + wy * (
                        vx * near_high[j0] + wx * near_high[j1]
                    )
                    far = (np.float32(1) - wy) * (vx * far_low[j0] + wx * far_low[j1]) + wy * (
                        vx * far_high[j0] + wx * far_high[j1]
                    )
                    row[i] = factor * ((np.float32(1) - wz) * near + wz * far)

    _KERNELS = SimpleNamespace(
        numba=numba,
        shifted_sums=_shifted_sums,
        normalise_=_normalise_,
        trilinear_warp=_trilinear_warp,
        channel_planes=_channel_planes,
        neighbour_flow=_neighbour_flow,
        kmeans=_kmeans,
        local_mean=_local_mean,
        select_activate_add=_select_activate_add,
        average_pool_twice=_average_pool_twice,
        upsample_twice=_upsample_twice,
    )


def _set_threads(kernels: SimpleNamespace) -> None:
    kernels.numba.set_num_threads(max(1, min(torch.get_num_threads(), kernels.numba.config.NUMBA_NUM_THREADS)))


def bfloat16_instance_norm_leaky_relu_(
    rows: torch.Tensor, channels: int, negative_slope: float, eps: float, kernels: SimpleNamespace
) -> None:
    """
    ``leaky_relu(instance_norm(x))`` written into x, for a bfloat16 CPU x viewed as rows of whole voxels (G, N, R),
    the values of ``channels`` channels repeating along each row (``norm_act._voxel_major_rows``). The statistics
    are sums of x minus a shift near each channel's mean (as exact as a centred two-pass formula), in float32 over
    32 rows and float64 beyond; the result is computed in float32 and rounded to bfloat16 like PyTorch. One read
    for the statistics, one read and write for the result.
    """
    groups, num_rows, width = rows.shape
    repeats = width // channels
    bits = rows.view(torch.int16).numpy().view(np.uint16)
    _set_threads(kernels)
    shift, sums = kernels.shifted_sums(bits, channels, _BLOCKS_PER_SAMPLE)
    first, second = sums.reshape(groups, _BLOCKS_PER_SAMPLE, 2, repeats, channels).sum((1, 3)).transpose(1, 0, 2)
    num_voxels = num_rows * repeats
    offset = first / num_voxels
    mean = shift[:, :channels].astype(np.float64) + offset
    scale = 1.0 / np.sqrt(np.maximum(second / num_voxels - offset * offset, 0.0) + eps)
    per_column = functools.partial(np.tile, reps=(1, repeats))
    kernels.normalise_(
        bits,
        per_column(mean.astype(np.float32)),
        per_column(scale.astype(np.float32)),
        np.float32(negative_slope),
        _BLOCKS_PER_SAMPLE,
    )


def trilinear_warp_(
    image: torch.Tensor, ddf: torch.Tensor, out: torch.Tensor, border: bool, kernels: SimpleNamespace
) -> torch.Tensor:
    """
    ``out.copy_(F.grid_sample(image.float(), ddf_sampling_grid(ddf), "bilinear", "border" if border else "zeros",
    align_corners=True))`` for CPU tensors, image (B, C, D, H, W) and out (B, C, D, H, W) float32 or bfloat16 (each
    independently), in any memory format, ddf (B, 3, D, H, W) float32 in voxels: the same values (PyTorch's float32
    arithmetic, in its order, the sampling grid computed per voxel instead of stored; a bfloat16 image read exactly,
    a bfloat16 out rounded to nearest, ties to even), on all threads, about 2x faster than ``grid_sample`` cut into
    slabs for 8 channels, and for bfloat16 features without a float32 copy of either. ``out`` must not share memory
    with ``image``.
    """
    _set_threads(kernels)

    def as_array(x: torch.Tensor) -> np.ndarray:  # (B, D, H, W, C): channels innermost, a view of x
        x = x.permute(0, 2, 3, 4, 1)
        return x.view(torch.int16).numpy().view(np.uint16) if x.dtype == torch.bfloat16 else x.numpy()

    def dense(x: torch.Tensor) -> bool:  # contiguous or channels-last: compiled for fixed strides, 2x faster
        return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last_3d)

    # e.g. one half of the channels of a stacked pair (pair_stacking.py): warped through dense copies
    source = image if dense(image) else image.contiguous(memory_format=torch.channels_last_3d)
    target = out if dense(out) else torch.empty_like(out, memory_format=torch.channels_last_3d)
    kernels.trilinear_warp(as_array(source), ddf.numpy(), as_array(target), border)
    return out if target is out else out.copy_(target)


def bfloat16_matching_flow(
    moving: torch.Tensor, fixed: torch.Tensor, subtract_self: bool, kernels: SimpleNamespace
) -> torch.Tensor:
    """
    :py:func:`~monai_sacb.networks.blocks.matching.similarity_matching_flow` of bfloat16 CPU features moving and
    fixed (B, C, D, H, W), any memory format, less ``similarity_matching_flow(fixed, fixed)`` where
    ``subtract_self``: (B, 3, D, H, W) float32. The scores ``<fixed(p), moving(p + v)>`` as exact float32 products
    summed over channels in their order, their softmax with a polynomial exp (about 1 ulp) and the mean offset,
    one plane of voxels at a time: each feature map is read once into float32 planes of one channel, and the
    (B, 27, D, H, W) scores are never stored.
    """
    _set_threads(kernels)

    def channel_planes(features: torch.Tensor) -> np.ndarray:
        batch, channels, depth, height, width = features.shape
        planes = np.empty((batch, depth, channels, height * width), np.uint32)
        kernels.channel_planes(features.permute(0, 2, 3, 4, 1).view(torch.int16).numpy().view(np.uint16), planes)
        return planes.view(np.float32)

    fixed_planes = channel_planes(fixed)
    moving_planes = fixed_planes if moving is fixed else channel_planes(moving)
    batch, depth, height, width = fixed.shape[0], *fixed.shape[2:]
    flow = torch.empty((batch, 3, depth, height, width), dtype=torch.float32)
    kernels.neighbour_flow(moving_planes, fixed_planes, width, subtract_self, flow.view(batch, 3, depth, -1).numpy())
    return flow


def bfloat16_kmeans(
    points: torch.Tensor, num_iters: int, init_draws: torch.Tensor, subset: torch.Tensor, kernels: SimpleNamespace
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    :py:func:`~monai_sacb.networks.blocks.kmeans.batched_kmeans` of bfloat16 CPU points (B, N, C), any strides,
    fitted on the points ``subset`` (n,) int64: the same algorithm (k-means++ with ``init_draws`` (K,), a fixed
    number of Lloyd iterations, an empty cluster keeping its centre, ties to the lowest index, every point then
    assigned to its nearest centre), each sample on its own thread in one compiled call instead of about a hundred
    small tensor operations. The sums are taken in other orders (the cluster sums in float64), so a point almost
    equally near two centres may go the other way. Returns assignments (B, N) int64 and centres (B, K, C) float32.
    """
    _set_threads(kernels)
    batch, num_points, channels = points.shape
    centres = torch.empty((batch, init_draws.numel(), channels), dtype=torch.float32)
    assignments = torch.empty((batch, num_points), dtype=torch.int64)
    kernels.kmeans(
        points.view(torch.int16).numpy().view(np.uint16),
        subset.cpu().numpy(),
        init_draws.detach().to(dtype=torch.float64, device="cpu").numpy(),
        num_iters,
        centres.numpy(),
        assignments.numpy(),
    )
    return assignments, centres


def bfloat16_local_mean(x: torch.Tensor, kernels: SimpleNamespace) -> torch.Tensor:
    """
    :py:func:`~monai_sacb.networks.blocks.sac.local_mean` of a bfloat16 CPU x (B, C, D, H, W), any memory format:
    the 27-voxel sums in float32 and one rounding of the mean to bfloat16 (the eager bfloat16 code rounds after
    each of its separable sums). Returns a new bfloat16 tensor in x's memory format.
    """
    _set_threads(kernels)
    out = torch.empty_like(x)
    as_bits = lambda t: t.permute(0, 2, 3, 4, 1).view(torch.int16).numpy().view(np.uint16)  # noqa: E731
    kernels.local_mean(as_bits(x), as_bits(out))
    return out


def bfloat16_select_activate_add(
    stacked: torch.Tensor,
    assignments: torch.Tensor,
    residual: torch.Tensor,
    negative_slope: float,
    out: torch.Tensor,
    kernels: SimpleNamespace,
) -> torch.Tensor:
    """
    ``out = residual + leaky_relu(selected)`` for one sample of bfloat16 CPU tensors, where ``selected`` takes from
    the stacked rows (N, K * C) each voxel's C values of its cluster (the "stacked" form of
    :py:func:`~monai_sacb.networks.blocks.adaptive_conv.cluster_adaptive_conv`): one pass instead of a gather, an
    activation and an addition, with their roundings (the same bits). residual and out are (C, *S) with channels
    innermost in memory (one sample of a channels-last batch); assignments (N,) int64.
    """
    _set_threads(kernels)
    as_rows = lambda t: t.movedim(0, -1).view(-1, t.shape[0]).view(torch.int16).numpy().view(np.uint16)  # noqa: E731
    kernels.select_activate_add(
        stacked.view(torch.int16).numpy().view(np.uint16),
        assignments.numpy(),
        as_rows(residual),
        as_rows(out),
        np.float32(negative_slope),
    )
    return out


def bfloat16_average_pool_twice(x: torch.Tensor, kernels: SimpleNamespace) -> torch.Tensor:
    """
    ``avg_pool3d(x, 2)`` of a bfloat16 CPU x (B, C, D, H, W), any memory format, as the exact float32 mean of each
    cell rounded once (:py:class:`~monai_sacb.networks.blocks.AvgPool2x` in eager bfloat16 rounds after each of its
    three additions). Returns a new bfloat16 tensor, channels-last unless x is contiguous.
    """
    _set_threads(kernels)
    shape = (*x.shape[:2], *(size // 2 for size in x.shape[2:]))
    layout = torch.contiguous_format if x.is_contiguous() else torch.channels_last_3d
    out = torch.empty(shape, dtype=torch.bfloat16, memory_format=layout)
    as_bits = lambda t: t.permute(0, 2, 3, 4, 1).view(torch.int16).numpy().view(np.uint16)  # noqa: E731
    kernels.average_pool_twice(as_bits(x), as_bits(out))
    return out


def float32_upsample_twice(x: torch.Tensor, factor: float, kernels: SimpleNamespace) -> torch.Tensor:
    """
    ``F.interpolate(factor * x, scale_factor=2, mode="trilinear", align_corners=True)`` of a float32 CPU x
    (B, C, D, H, W): the same values as PyTorch's kernel on the CPUs seen (fused multiply-adds where it has them),
    on all threads, in about half its time. Returns a new contiguous tensor.
    """
    _set_threads(kernels)
    x = x.contiguous()
    out = torch.empty((*x.shape[:2], *(2 * size for size in x.shape[2:])), dtype=torch.float32)
    kernels.upsample_twice(x.numpy(), out.numpy(), np.float32(factor))
    return out
