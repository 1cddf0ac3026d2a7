# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Fast local normalised cross-correlation (LNCC) with box windows.

MONAI's ``LocalNormalizedCrossCorrelationLoss`` computes its five local sums with depthwise convolutions and
lets autograd differentiate them; on a CPU the backward pass of those convolutions dominates the cost of a
registration step. Here a box sum is separable and exact: on the CPU each axis is one product with a banded
matrix of ones (the sum of each window's values, the zero padding included), elsewhere ``log2(k) + 1``
shifted additions per axis (pairwise sums), so float32 rounding stays at the level of the convolution's. The
gradient is written by hand: the adjoint of a zero-padded box sum with an odd, symmetric window is the same
box sum, so the backward pass is three (five when the target also needs a gradient) more box sums and a few
element-wise operations.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from monai.utils import LossReduction

__all__ = ["local_box_sum", "FastLocalNormalizedCrossCorrelationLoss", "FastLNCCLoss", "LNCC_VARIANTS"]

#: the supported formulas of :py:class:`FastLocalNormalizedCrossCorrelationLoss`.
LNCC_VARIANTS = ("monai", "sacb")


def _check_kernel_size(kernel_size: Any, name: str = "kernel_size") -> int:
    try:
        if isinstance(kernel_size, bool):
            raise TypeError
        kernel_size = operator.index(kernel_size)  # int, numpy integers
    except TypeError:
        raise ValueError(f"{name} must be a positive odd int, got {kernel_size!r}.") from None
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"{name} must be a positive odd int (the window is centred on each voxel), got {kernel_size}; "
            f"use {kernel_size + 1 if kernel_size >= 1 else 1} instead."
        )
    return kernel_size


def _valid_box_sum(x: torch.Tensor, kernel_size: int, dim: int) -> torch.Tensor:
    """
    ``out[i] = x[i] + ... + x[i + kernel_size - 1]`` along ``dim`` (no padding: the output is
    ``kernel_size - 1`` shorter). Windows of length 1, 2, 4, ... are built by doubling and the ones selected by
    the binary digits of ``kernel_size`` are added, so each output is a pairwise sum.
    """
    length = x.shape[dim]
    result: torch.Tensor | None = None
    width = 0  # window of ``result``
    power, power_width = x, 1  # window of ``power``
    remaining = kernel_size
    while True:
        if remaining & 1:
            if result is None:
                result, width = power, power_width
            else:
                n = length - width - power_width + 1
                result = result.narrow(dim, 0, n) + power.narrow(dim, width, n)
                width += power_width
        remaining >>= 1
        if not remaining:
            break
        n = length - 2 * power_width + 1
        power = power.narrow(dim, 0, n) + power.narrow(dim, power_width, n)
        power_width *= 2
    assert result is not None
    return result


#: axes longer than this use the shifted additions even where the banded matrix product is exact (its cost
#: grows with the axis length, that of the additions with log2(kernel_size)).
_MATMUL_MAX_LENGTH = 320


def _matmul_is_exact(x: torch.Tensor) -> bool:
    """
    Whether a box sum may be a product with a banded matrix of ones: on the CPU, in float64, or in float32
    when matrix products keep full precision (not after ``torch.set_float32_matmul_precision("high")`` or
    ``"medium"``, which allow TF32 or bfloat16 products). On other devices the additions are used, so that a
    global TF32 setting cannot change the loss.
    """
    if x.device.type != "cpu":
        return False
    if x.dtype == torch.float64:
        return True
    if x.dtype != torch.float32 or torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn_matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(mkldnn_matmul, "fp32_precision", "none") in ("none", "ieee")


def _box_sum_axis(x: torch.Tensor, kernel_size: int, dim: int, use_matmul: bool) -> torch.Tensor:
    """Zero-padded box sum of odd size ``kernel_size`` along ``dim`` (>= 0); same shape as ``x``."""
    shape = x.shape
    length = shape[dim]
    half = kernel_size // 2
    if use_matmul and length <= _MATMUL_MAX_LENGTH:
        # ``band[i, j] = 1`` where ``|i - j| <= half``: a product with it sums each window, the zero padding
        # included (the products with 0 are exact zeros, so the rounding is that of adding the window's values)
        index = torch.arange(length, device=x.device)
        band = ((index[:, None] - index[None, :]).abs() <= half).to(x.dtype)
        inner = 1
        for size in shape[dim + 1 :]:
            inner *= size
        # autocast would run the product in float16/bfloat16: keep the input's dtype (the sums are exact)
        with torch.autocast(x.device.type, enabled=False):
            if inner == 1:
                return (x.reshape(-1, length) @ band).reshape(shape)
            return torch.matmul(band, x.reshape(-1, length, inner)).reshape(shape)
    pad = [0, 0] * (x.ndim - 1 - dim) + [half, half]
    return _valid_box_sum(torch.nn.functional.pad(x, pad), kernel_size, dim)


def _box_sum(x: torch.Tensor, kernel_sizes: Sequence[int]) -> torch.Tensor:
    """Zero-padded box sums over the last ``len(kernel_sizes)`` dims of ``x``, as a new tensor of its shape."""
    use_matmul = _matmul_is_exact(x)
    out = x
    first = x.ndim - len(kernel_sizes)
    for i in reversed(range(len(kernel_sizes))):
        if kernel_sizes[i] > 1:
            out = _box_sum_axis(out, kernel_sizes[i], first + i, use_matmul)
    return out.clone() if out is x else out


def local_box_sum(x: torch.Tensor, kernel_size: int | Sequence[int], spatial_dims: int | None = None) -> torch.Tensor:
    """
    Sum of ``x`` in a box window centred on each element, with zero padding: the same as
    ``monai.networks.layers.separable_filtering(x, [torch.ones(k)] * spatial_dims)`` (a convolution with a
    kernel of ones and padding ``k // 2``), one axis at a time: on the CPU (float64, or float32 while
    ``torch.get_float32_matmul_precision()`` is ``"highest"``) as a product with a banded matrix of ones,
    otherwise, or along axes longer than 320, with ``log2(k) + 1`` shifted additions. Both sum exactly each
    window's values (no running sums), so the rounding is that of the convolution. Differentiable with autograd.

    Args:
        x: tensor of shape (..., *spatial), e.g. (B, C, H, W[, D]).
        kernel_size: the window size, a positive odd int, or one per spatial dimension.
        spatial_dims: number of trailing dimensions to sum over. Defaults to ``x.ndim - 2`` (the
            (B, C, *spatial) layout).

    Returns:
        a tensor of the shape and dtype of ``x``.

    Raises:
        ValueError: when a kernel size is not a positive odd int, or when ``x`` has fewer than
            ``spatial_dims`` dimensions.
    """
    if spatial_dims is None:
        spatial_dims = x.ndim - 2
    if spatial_dims < 1 or spatial_dims > x.ndim:
        raise ValueError(
            f"local_box_sum: cannot sum over {spatial_dims} spatial dims of a tensor of shape {tuple(x.shape)}; "
            "pass spatial_dims explicitly or give x the (B, C, *spatial) layout."
        )
    if isinstance(kernel_size, int):
        sizes = [_check_kernel_size(kernel_size)] * spatial_dims
    else:
        sizes = [_check_kernel_size(k) for k in kernel_size]
        if len(sizes) != spatial_dims:
            raise ValueError(f"expecting {spatial_dims} kernel sizes (one per spatial dim), got {len(sizes)}.")
    return _box_sum(x, sizes)


def _ncc_from_sums(
    sums: torch.Tensor, kernel_vol: float, smooth_nr: float, smooth_dr: float, variant: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The squared local correlation from the stacked local sums (S_t, S_p, S_tt, S_pp, S_tp), in MONAI's
    operation order (the target and pred rows are computed together, element for element as MONAI does), or
    in that of the published formula for ``variant="sacb"``.

    Returns ``(ncc, cross, var, den)``: ``var`` stacks (t_var, p_var) before MONAI's clamping and ``den`` is
    the denominator of ``ncc``.
    """
    avg = sums[:2] / kernel_vol  # (t_avg, p_avg)
    if variant == "monai":
        cross = sums[4] - avg[1] * sums[0]  # tp_sum - p_avg * t_sum
    else:
        cross = sums[4] - avg[0] * sums[1]  # sum(IJ) - mean(I) sum(J), I the target
    var = sums[2:4] - avg * sums[:2]  # t2_sum - t_avg * t_sum, p2_sum - p_avg * p_sum
    del avg
    numerator = cross * cross
    if smooth_nr != 0.0:
        numerator += smooth_nr
    if variant == "monai":
        clamped = var.clamp_min(smooth_dr)
        den = clamped[0] * clamped[1]
    else:
        den = (var[0] * var[1]).add_(smooth_dr)
    return numerator.div_(den), cross, var, den


class _BoxLNCCFunction(torch.autograd.Function):
    """Per-voxel squared LNCC map with a hand-written backward (see ``FastLocalNormalizedCrossCorrelationLoss``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        pred: torch.Tensor,
        target: torch.Tensor,
        kernel_size: int,
        spatial_dims: int,
        smooth_nr: float,
        smooth_dr: float,
        variant: str,
    ) -> torch.Tensor:
        kernel_vol = float(kernel_size**spatial_dims)
        products = pred.new_empty((5, *pred.shape))  # target, pred, target^2, pred^2, target pred
        torch.stack((target, pred), out=products[:2])
        torch.mul(products[:2], products[:2], out=products[2:4])
        torch.mul(target, pred, out=products[4])
        sums = _box_sum(products, [kernel_size] * spatial_dims)
        del products

        ncc, cross, var, den = _ncc_from_sums(sums, kernel_vol, smooth_nr, smooth_dr, variant)
        ctx.save_for_backward(pred, target, sums, cross, var, den, ncc)
        ctx.options = (kernel_size, spatial_dims, smooth_dr, variant, kernel_vol)
        return ncc

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_ncc: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        pred, target, sums, cross, var, den, ncc = ctx.saved_tensors
        kernel_size, spatial_dims, smooth_dr, variant, kernel_vol = ctx.options
        need_pred, need_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_pred or need_target):
            return (None,) * 7
        # the rows of ``var`` (t_var, p_var) whose derivative is needed
        rows = slice(0 if need_target else 1, 2 if need_pred else 1)

        # ncc = (cross^2 + nr) / den: the derivatives of the loss w.r.t. cross and the variances
        grad_over_den = grad_ncc / den
        d_cross = torch.mul(cross, grad_over_den).mul_(2.0)
        if variant == "monai":
            # den = max(t_var, dr) max(p_var, dr): d ncc / d t_var = -ncc / max(t_var, dr) where t_var > dr, 0 where
            # t_var < dr, and half of it on a tie (as torch.max's gradient); sign(var - dr) + 1 is 2, 0 or 1
            # (x - y == 0 only when x == y)
            selected = var[rows]
            d_var = torch.sign(selected - smooth_dr).add_(1.0).mul_(-0.5)
            d_var.mul_(grad_ncc * ncc).div_(selected.clamp_min(smooth_dr))
        else:
            # den = t_var p_var + dr: d ncc / d t_var = -ncc p_var / den
            d_var = var.flip(0)[rows] * (grad_over_den * ncc).neg_()
        del grad_over_den
        d_t_var = d_var[0] if need_target else None
        d_p_var = d_var[-1] if need_pred else None

        # the derivatives w.r.t. the local sums, from cross = S_tp - S_p S_t / N and x_var = S_xx - S_x^2 / N:
        #   S_tp: d_cross;  S_pp: d_p_var;  S_p: -(d_cross S_t + 2 d_p_var S_p) / N  (and likewise for the target)
        # stacked, so that one box sum (the adjoint of a zero-padded odd box sum is itself) spreads them back
        t_sum, p_sum = sums[0], sums[1]
        names = ["tp"] + (["pp", "p"] if need_pred else []) + (["tt", "t"] if need_target else [])
        adjoints = pred.new_empty((len(names), *pred.shape))
        slot = dict(zip(names, adjoints.unbind(0)))
        slot["tp"].copy_(d_cross)
        if d_p_var is not None:
            slot["pp"].copy_(d_p_var)
            torch.mul(d_cross, t_sum, out=slot["p"]).addcmul_(d_p_var, p_sum, value=2.0).div_(-kernel_vol)
        if d_t_var is not None:
            slot["tt"].copy_(d_t_var)
            torch.mul(d_cross, p_sum, out=slot["t"]).addcmul_(d_t_var, t_sum, value=2.0).div_(-kernel_vol)
        del slot, d_var, d_cross
        spread = dict(zip(names, _box_sum(adjoints, [kernel_size] * spatial_dims).unbind(0)))
        del adjoints

        # pred enters S_p = box(pred), S_pp = box(pred^2) and S_tp = box(target pred); likewise the target
        grad_pred = grad_target = None
        if need_pred:
            grad_pred = torch.addcmul(spread["p"], pred, spread["pp"], value=2.0).addcmul_(target, spread["tp"])
        if need_target:
            grad_target = torch.addcmul(spread["t"], target, spread["tt"], value=2.0).addcmul_(pred, spread["tp"])
        return grad_pred, grad_target, None, None, None, None, None


class FastLocalNormalizedCrossCorrelationLoss(_Loss):
    """
    Local squared zero-normalised cross-correlation in a box window, negated, with fast box sums and a
    hand-written backward pass.

    With ``variant="monai"`` (default) it computes exactly what
    ``monai.losses.LocalNormalizedCrossCorrelationLoss(spatial_dims, kernel_size, kernel_type="rectangular",
    reduction, smooth_nr, smooth_dr)`` computes, with the same operation order; with ``N = kernel_size **
    spatial_dims`` and the local sums ``S_x`` of a window (zero padding at the borders, ``N`` fixed)::

        cross = S_tp - (S_p / N) S_t
        t_var = max(S_tt - (S_t / N) S_t, smooth_dr)
        p_var = max(S_pp - (S_p / N) S_p, smooth_dr)
        ncc   = (cross^2 + smooth_nr) / (t_var p_var)

    With ``variant="sacb"`` it computes the NCC of the published SACB-Net / VoxelMorph code (no clamping; the
    constant ``1e-5`` of that code is ``smooth_dr``)::

        ncc = (cross^2 + smooth_nr) / (var_t var_p + smooth_dr)

    with ``cross = S_tp - (S_t / N) S_p`` and ``var_x = S_xx - (S_x / N) S_x`` (algebraically equal to
    VoxelMorph's expanded form; ``t`` is its ``I``, the fixed image, and ``p`` its ``J``).
    The loss is ``-ncc`` reduced by ``reduction``: about -1 for a perfect local linear match, 0 for none.
    Minimise it.

    On a 2-thread CPU, forward plus backward at 96x112x96 takes about a tenth of the time of MONAI's
    convolution-based loss (see ``benchmarks/bench_lncc.py``). Only plain torch operations are used, so it
    runs on any device, in float32 and float64; under ``torch.autocast`` it keeps the inputs' dtype.

    Args:
        spatial_dims: number of spatial dimensions, {``1``, ``2``, ``3``}. Defaults to 3.
        kernel_size: the box window size, a positive odd int. Defaults to 9 (the paper's 9x9x9 window; MONAI's
            default is 3).
        kernel_type: only ``"rectangular"`` (accepted so that arguments written for MONAI's class work here).
        reduction: {``"none"``, ``"mean"``, ``"sum"``}: no reduction (a map of shape (B, C, *spatial)), the mean
            or the sum over batch, channels and voxels. Defaults to ``"mean"``.
        smooth_nr: a small constant added to the numerator. Defaults to 0.0.
        smooth_dr: the lower bound of each local variance (``"monai"``) or the constant added to their product
            (``"sacb"``). Defaults to 1e-5.
        variant: {``"monai"``, ``"sacb"``}, see above. Defaults to ``"monai"``.

    The arguments are in the order of MONAI's class (plus ``variant``), so it is a drop-in replacement for the
    rectangular window. Gradients flow to ``pred`` and, when it requires one, to ``target``. The attributes
    ``kernel_size``, ``kernel_type`` (``"rectangular"``), ``kernel`` (``torch.ones(kernel_size)``) and
    ``kernel_vol`` mirror MONAI's for introspection; ``kernel`` is not used by the computation.

    Example::

        loss = FastLocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9)
        value = loss(warped, fixed)  # both (B, C, H, W, D); a 0-dim tensor, about -1 when they match
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        kernel_size: int = 9,
        kernel_type: str = "rectangular",
        reduction: LossReduction | str = LossReduction.MEAN,
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-5,
        variant: str = "monai",
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        self.ndim = self.spatial_dims = int(spatial_dims)
        self.kernel_size = _check_kernel_size(kernel_size)
        if str(kernel_type).lower() != "rectangular":
            raise ValueError(
                f"only the rectangular (box) window is supported, got kernel_type={kernel_type!r}; use "
                "monai.losses.LocalNormalizedCrossCorrelationLoss (RegistrationLoss similarity 'monai_lncc') for "
                "triangular or gaussian windows."
            )
        self.kernel_type = "rectangular"
        self.variant = str(variant).lower()
        if self.variant not in LNCC_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}, valid options are {', '.join(map(repr, LNCC_VARIANTS))}.")
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.kernel: torch.Tensor
        self.kernel_vol: torch.Tensor
        self.register_buffer("kernel", torch.ones(self.kernel_size), persistent=False)
        self.register_buffer("kernel_vol", torch.tensor(float(self.kernel_size**self.ndim)), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred: the predicted (e.g. warped moving) image, shape (B, C, *spatial) with ``spatial_dims``
                spatial dimensions, floating point.
            target: the target (fixed) image, same shape as ``pred``.

        Returns:
            the negated squared local correlation: a 0-dim tensor for ``"mean"`` and ``"sum"``, a tensor of
            shape (B, C, *spatial) for ``"none"``.

        Raises:
            ValueError: when ``pred`` does not have ``spatial_dims + 2`` dimensions or ``target`` differs in shape.
            TypeError: when an input is not a floating point tensor.
        """
        if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError(f"pred and target must be tensors, got {type(pred).__name__} and {type(target).__name__}.")
        if pred.ndim != self.ndim + 2:
            fix = "add the batch/channel dims (e.g. x[None])"
            if pred.ndim in (3, 4, 5):
                fix += f" or set spatial_dims={pred.ndim - 2}"
            raise ValueError(
                f"expecting pred of shape (B, C, *spatial) with {self.ndim} spatial dims, got shape "
                f"{tuple(pred.shape)}; {fix}."
            )
        if target.shape != pred.shape:
            raise ValueError(
                f"target has shape {tuple(target.shape)}, different from pred's {tuple(pred.shape)}; "
                "resample or crop both images to the same grid first."
            )
        if not (pred.is_floating_point() and target.is_floating_point()):
            raise TypeError(
                f"pred and target must be floating point, got {pred.dtype} and {target.dtype}; convert with .float()."
            )
        if pred.dtype != target.dtype:
            dtype = torch.promote_types(pred.dtype, target.dtype)
            pred, target = pred.to(dtype), target.to(dtype)

        ncc = _BoxLNCCFunction.apply(
            pred, target, self.kernel_size, self.ndim, self.smooth_nr, self.smooth_dr, self.variant
        )
        if self.reduction == LossReduction.SUM.value:
            return torch.sum(ncc).neg()
        if self.reduction == LossReduction.NONE.value:
            return ncc.neg()
        if self.reduction == LossReduction.MEAN.value:
            return torch.mean(ncc).neg()
        raise ValueError(f'Unsupported reduction: {self.reduction}, available options are ["mean", "sum", "none"].')

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.ndim}, kernel_size={self.kernel_size}, variant={self.variant!r}, "
            f"smooth_nr={self.smooth_nr}, smooth_dr={self.smooth_dr}, reduction={self.reduction!r}"
        )


#: short alias.
FastLNCCLoss = FastLocalNormalizedCrossCorrelationLoss
