# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Random smooth deformations, and synthetic registration pairs made from one subject.

Displacement fields (ddf) follow the project's convention: shape ``(spatial_dims, *spatial)``, in voxels,
channel ``i`` is the displacement along spatial axis ``i``, and warping is backward,
``warped(p) = moving(p + ddf(p))``, exactly what :py:class:`monai.networks.blocks.Warp` consumes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple

from monai_sacb.networks.blocks.warp import warp_with_ddf

__all__ = ["REFERENCE_SPACING", "random_smooth_field", "random_smooth_ddf", "RandSmoothDeformd", "RandSyntheticPaird"]

REFERENCE_SPACING = 2.0
"""Voxel size (mm) for which the random deformations' default lengths (in voxels) are stated: the bundle's grid."""


def _cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    """Centred cubic B-spline, support (-2, 2)."""
    t = t.abs()
    near = (4.0 - 6.0 * t**2 + 3.0 * t**3) / 6.0
    far = (2.0 - t).clamp(min=0.0) ** 3 / 6.0
    return torch.where(t < 1.0, near, far)


def _bspline_basis(size: int, spacing: float, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    """``(size, num_ctrl)`` matrix of B-spline weights, control point ``i`` at voxel ``(i - 1) * spacing``."""
    num_ctrl = int(np.floor((size - 1) / spacing)) + 4
    x = torch.arange(size, dtype=torch.float64)[:, None] / spacing
    i = torch.arange(num_ctrl, dtype=torch.float64)[None, :]
    return _cubic_bspline(x - (i - 1.0)).to(dtype=dtype, device=device)


def _standard_normal(shape: Sequence[int], rng: Any, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    """Draw N(0, 1) samples from whichever random source was given (numpy sources keep MONAI's ``self.R`` seeding)."""
    if isinstance(rng, torch.Generator):
        values = torch.randn(tuple(shape), generator=rng, dtype=dtype, device=rng.device)
        return values if device is None else values.to(device)
    if rng is None or isinstance(rng, (int, np.integer)):
        rng = np.random.RandomState(rng)
    if not isinstance(rng, (np.random.RandomState, np.random.Generator)):
        raise TypeError(
            f"rng must be None, an int, np.random.RandomState/Generator or torch.Generator, got {type(rng).__name__}."
        )
    return torch.as_tensor(rng.standard_normal(size=tuple(shape)), dtype=dtype, device=device)


def random_smooth_field(
    spatial_shape: Sequence[int],
    channels: int = 1,
    control_spacing: float = 16,
    rng: Any = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """
    Random smooth field: N(0, 1) values on a control grid interpolated by cubic B-splines (a free-form deformation).

    The field is C2-smooth, with features about ``control_spacing`` voxels wide; its amplitude is not normalised.

    Args:
        spatial_shape: output spatial size, 1, 2 or 3 values.
        channels: number of independent field components.
        control_spacing: distance between control points, in voxels.
        rng: seed, ``np.random.RandomState``, ``np.random.Generator`` or ``torch.Generator``; ``None`` draws fresh entropy.
        device: device of the result.
        dtype: floating dtype of the result.

    Returns:
        tensor of shape ``(channels, *spatial_shape)``.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    ndim = len(spatial_shape)
    if ndim not in (1, 2, 3):
        raise ValueError(f"spatial_shape must have 1, 2 or 3 dimensions, got {spatial_shape}.")
    if control_spacing <= 0:
        raise ValueError(f"control_spacing must be positive, got {control_spacing}.")
    bases = [_bspline_basis(s, float(control_spacing), dtype, device) for s in spatial_shape]
    field = _standard_normal([channels] + [b.shape[1] for b in bases], rng, dtype, device)
    # separable interpolation: contract one control-grid axis at a time with its basis matrix
    for axis, basis in enumerate(bases):
        field = torch.movedim(torch.tensordot(field, basis, dims=([1 + axis], [1])), -1, 1 + axis)
    return field.contiguous()


def random_smooth_ddf(
    spatial_shape: Sequence[int],
    max_displacement: float = 4.0,
    control_spacing: float = 16,
    rng: Any = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """
    Random smooth dense displacement field whose largest displacement vector is exactly ``max_displacement`` voxels.

    Each component is a cubic B-spline free-form deformation (see :py:func:`random_smooth_field`); the whole field
    is then scaled so that ``max_p |ddf(p)| == max_displacement``. Up to about ``max_displacement = control_spacing / 2``
    the map ``p -> p + ddf(p)`` was found fold-free (positive Jacobian determinant); larger values may fold.

    Args:
        spatial_shape: spatial size of the field, 2 or 3 values.
        max_displacement: largest Euclidean displacement, in voxels; 0 gives the identity (an all-zero field).
        control_spacing: distance between B-spline control points, in voxels: larger is smoother.
        rng: seed, ``np.random.RandomState``, ``np.random.Generator`` or ``torch.Generator``; ``None`` draws fresh entropy.
        device: device of the result.
        dtype: floating dtype of the result.

    Returns:
        ddf of shape ``(spatial_dims, *spatial_shape)``, in voxels, channel ``i`` along spatial axis ``i``.
    """
    if max_displacement < 0:
        raise ValueError(f"max_displacement must be >= 0, got {max_displacement}.")
    ndim = len(spatial_shape)
    field = random_smooth_field(spatial_shape, ndim, control_spacing, rng, device, dtype)
    peak = field.square().sum(0).max().sqrt()
    return field * (max_displacement / peak.clamp(min=torch.finfo(dtype).tiny))


def _range(value: float | Sequence[float]) -> tuple[float, float]:
    if np.isscalar(value):
        return float(value), float(value)
    low, high = value
    return float(low), float(high)


def _warp(img: Any, ddf: torch.Tensor, padding_mode: str, nearest: bool) -> Any:
    """
    A ``(C, *spatial)`` array warped by a ``(spatial_dims, *spatial)`` ddf (:py:func:`warp_with_ddf`, computed in
    the ddf's dtype): labels (``nearest``) keep their dtype; images come back as floats even when given as integers.
    """
    x = torch.as_tensor(img.as_tensor() if hasattr(img, "as_tensor") else img)
    src_dtype = x.dtype
    if nearest and not src_dtype.is_floating_point:
        x = x.to(device=ddf.device)  # integer labels: warp_with_ddf keeps their values and dtype
    else:
        x = x.to(device=ddf.device, dtype=ddf.dtype)
    out = warp_with_ddf(x[None], ddf[None], padding_mode, mode="nearest" if nearest else "bilinear")[0]
    dtype = src_dtype if nearest or src_dtype.is_floating_point else torch.float32
    return convert_to_dst_type(out, img, dtype=dtype)[0]


class RandSmoothDeformd(RandomizableTransform, MapTransform):
    """
    Deform images and label maps of one sample with one random smooth field, so that labels stay on the image.

    Images (``keys``) are resampled bilinearly, label maps (``label_keys``) by nearest neighbour; all arrays are
    channel-first ``(C, *spatial)`` with the same spatial shape. The field comes from :py:func:`random_smooth_ddf`
    drawn from ``self.R``, so ``set_random_state`` makes runs reproducible.

    Args:
        keys: image keys (bilinear interpolation).
        label_keys: label keys (nearest-neighbour interpolation; integer dtypes are kept).
        prob: probability of deforming a sample.
        max_displacement: largest displacement in voxels, or a ``(low, high)`` range to draw it from uniformly.
        control_spacing: B-spline control point spacing in voxels.
        padding_mode: ``grid_sample`` padding for points mapped outside the volume.
        ddf_key: if given, the field used (zeros when the sample was not deformed) is stored under this key,
            shape ``(spatial_dims, *spatial)``, in voxels.
        allow_missing_keys: don't raise if some keys are absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        prob: float = 1.0,
        max_displacement: float | Sequence[float] = 4.0,
        control_spacing: float = 16,
        padding_mode: str = "border",
        ddf_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        label_keys = ensure_tuple(label_keys)
        MapTransform.__init__(self, ensure_tuple(keys) + label_keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_keys = tuple(label_keys)
        self.max_displacement = _range(max_displacement)
        self.control_spacing = control_spacing
        self.ddf_key = ddf_key
        self.padding_mode = padding_mode
        self._ddf: torch.Tensor | None = None

    def randomize(self, spatial_shape: Sequence[int], device: torch.device | None = None) -> None:  # type: ignore[override]
        super().randomize(None)
        self._ddf = None
        if self._do_transform:
            magnitude = self.R.uniform(*self.max_displacement)
            self._ddf = random_smooth_ddf(spatial_shape, magnitude, self.control_spacing, rng=self.R, device=device)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = list(self.key_iterator(d))
        if not present:
            return d
        first = torch.as_tensor(d[present[0]])
        spatial_shape = first.shape[1:]
        self.randomize(spatial_shape, device=first.device)
        if self._ddf is not None:
            for key in present:
                d[key] = _warp(d[key], self._ddf, self.padding_mode, nearest=key in self.label_keys)
        if self.ddf_key is not None:
            ddf = self._ddf if self._ddf is not None else torch.zeros((len(spatial_shape), *spatial_shape))
            d[self.ddf_key] = ddf
        return d


class RandSyntheticPaird(RandomizableTransform, MapTransform):
    """
    Make a registration pair from one subject: two independent random smooth deformations (and intensity changes).

    From ``{image_key: (C, *spatial), label_key: (C, *spatial)}`` it builds ``moving_image``, ``fixed_image``,
    ``moving_label``, ``fixed_label``: each side is the subject warped by its own field from
    :py:func:`random_smooth_ddf` (images bilinear, labels nearest, one field per side so each label stays on its
    image), then, images only, a random gamma, contrast, smooth multiplicative bias field and Gaussian noise.
    Images are expected in ``[0, 1]`` and are clipped back to it. All randomness comes from ``self.R``.

    Args:
        image_key: key of the subject image.
        label_key: key of the subject label map, or ``None`` for image-only pairs.
        max_displacement: largest displacement of each side, in voxels, or a ``(low, high)`` range.
        control_spacing: B-spline control point spacing of the deformations, in voxels.
        gamma_range: range of the exponent applied to the image (``x ** gamma``); ``(1, 1)`` disables it.
        contrast_range: range of the factor applied around the mean of the non-zero voxels; ``(1, 1)`` disables it.
        bias_field_magnitude: the image is multiplied by ``exp(b * field)``, ``field`` a smooth unit-peak field and
            ``b`` drawn from ``[0, bias_field_magnitude]``; 0 disables it.
        bias_field_spacing: control point spacing of the bias field, in voxels.
        noise_std_range: range of the standard deviation of the additive Gaussian noise; ``(0, 0)`` disables it.
        intensity_prob: probability of applying the intensity changes to each side.
        padding_mode: ``grid_sample`` padding for points mapped outside the volume.
        ddf_keys: if given, a pair of keys ``(moving, fixed)`` under which the two fields are stored
            (each maps the subject onto that side: ``side(p) = subject(p + ddf(p))``).
        keep_source: keep ``image_key``/``label_key`` in the output.
        moving_image_key, fixed_image_key, moving_label_key, fixed_label_key: output keys.
        spacing: voxel size of the subject in mm. ``max_displacement`` and ``control_spacing`` are then read as
            voxels of :data:`REFERENCE_SPACING` (2 mm) and multiplied by ``REFERENCE_SPACING / spacing``, so the
            same values make deformations of the same size in millimetres on any grid. None or 0: as given.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        max_displacement: float | Sequence[float] = (4.0, 7.0),
        control_spacing: float = 16,
        gamma_range: Sequence[float] = (0.7, 1.4),
        contrast_range: Sequence[float] = (0.8, 1.2),
        bias_field_magnitude: float = 0.3,
        bias_field_spacing: int = 32,
        noise_std_range: Sequence[float] = (0.0, 0.02),
        intensity_prob: float = 1.0,
        padding_mode: str = "border",
        ddf_keys: Sequence[str] | None = None,
        keep_source: bool = False,
        moving_image_key: str = "moving_image",
        fixed_image_key: str = "fixed_image",
        moving_label_key: str = "moving_label",
        fixed_label_key: str = "fixed_label",
        spacing: float | None = None,
    ) -> None:
        keys = [image_key] + ([label_key] if label_key is not None else [])
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=1.0)
        self.image_key = image_key
        self.label_key = label_key
        factor = REFERENCE_SPACING / float(spacing) if spacing else 1.0
        low, high = _range(max_displacement)
        self.max_displacement = (low * factor, high * factor)
        self.control_spacing = control_spacing * factor if spacing else control_spacing
        self.gamma_range = _range(gamma_range)
        self.contrast_range = _range(contrast_range)
        self.bias_field_magnitude = float(bias_field_magnitude)
        self.bias_field_spacing = bias_field_spacing
        self.noise_std_range = _range(noise_std_range)
        self.intensity_prob = intensity_prob
        self.ddf_keys = tuple(ddf_keys) if ddf_keys is not None else None
        self.keep_source = keep_source
        self.out_keys = {
            "moving": (moving_image_key, moving_label_key),
            "fixed": (fixed_image_key, fixed_label_key),
        }
        self.padding_mode = padding_mode

    def randomize(self, data: Any = None) -> None:
        # all draws happen in _side, in a fixed order, from self.R
        pass

    def _intensity(self, img: torch.Tensor) -> torch.Tensor:
        """Random gamma, contrast, bias field and noise on a ``(C, *spatial)`` float image in [0, 1]."""
        if self.R.uniform() >= self.intensity_prob:
            return img
        gamma = self.R.uniform(*self.gamma_range)
        contrast = self.R.uniform(*self.contrast_range)
        bias = self.R.uniform(0.0, self.bias_field_magnitude)
        noise_std = self.R.uniform(*self.noise_std_range)
        out = img.clamp(0.0, 1.0) ** gamma
        # contrast around the foreground mean, so that a zero (skull-stripped) background stays zero
        foreground = out > 0
        if bool(foreground.any()):
            mean = out[foreground].mean()
            out = torch.where(foreground, (out - mean) * contrast + mean, out)
        if bias > 0:
            field = random_smooth_field(img.shape[1:], 1, self.bias_field_spacing, rng=self.R, device=img.device)
            out = out * torch.exp(bias * field / field.abs().max().clamp(min=1e-12))
        if noise_std > 0:
            out = out + noise_std * _standard_normal(img.shape, self.R, img.dtype, img.device)
        return out.clamp(0.0, 1.0)

    def _side(self, image: Any, label: Any) -> tuple[Any, Any, torch.Tensor]:
        spatial_shape = torch.as_tensor(image).shape[1:]
        magnitude = self.R.uniform(*self.max_displacement)
        device = torch.as_tensor(image).device
        ddf = random_smooth_ddf(spatial_shape, magnitude, self.control_spacing, rng=self.R, device=device)
        warped = _warp(image, ddf, self.padding_mode, nearest=False)
        plain = warped.as_tensor() if hasattr(warped, "as_tensor") else torch.as_tensor(warped)
        warped = convert_to_dst_type(self._intensity(plain.float()), warped)[0]
        warped_label = _warp(label, ddf, self.padding_mode, nearest=True) if label is not None else None
        return warped, warped_label, ddf

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        label = d.get(self.label_key) if self.label_key is not None else None
        ddfs = []
        for side in ("moving", "fixed"):
            warped, warped_label, ddf = self._side(image, label)
            image_key, label_key = self.out_keys[side]
            d[image_key] = warped
            if warped_label is not None:
                d[label_key] = warped_label
            ddfs.append(ddf)
        if self.ddf_keys is not None:
            for key, ddf in zip(self.ddf_keys, ddfs):
                d[key] = ddf
        if not self.keep_source:
            for key in self.keys:
                d.pop(key, None)
        return d
