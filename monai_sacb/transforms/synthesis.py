# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Label-driven synthesis of registration pairs, after the idea of SynthMorph (Hoffmann et al., "SynthMorph: learning
contrast-invariant registration without acquired images", IEEE TMI 2022): from an anatomical label map, make two
images of two independently deformed copies of the anatomy, with random contrasts and MR artefacts, so that a
network trained on them learns to register anatomy rather than one template's intensities.

Displacement fields follow the project's convention: ``(spatial_dims, *spatial)`` in voxels, channel ``i`` along
spatial axis ``i``, backward warping ``warped(p) = moving(p + ddf(p))`` (:py:class:`monai.networks.blocks.Warp`).
Everything is plain torch, so the transforms run on the device of their input (CPU or CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type

from monai_sacb.networks.blocks.warp import resize_ddf, warp_with_ddf
from monai_sacb.transforms.deformation import REFERENCE_SPACING, random_smooth_field

__all__ = [
    "integrate_velocity",
    "random_velocity_ddf",
    "random_affine_ddf",
    "random_contrast",
    "synthesize_image",
    "RandLabelSynthPaird",
]


def integrate_velocity(velocity: torch.Tensor, num_steps: int = 7) -> torch.Tensor:
    """
    Displacement of the flow of a stationary velocity field, by scaling and squaring:
    ``ddf = v / 2**num_steps``, then ``num_steps`` times ``ddf(p) <- ddf(p) + ddf(p + ddf(p))``.

    The result is (approximately) a diffeomorphism: smooth velocities give fold-free, invertible deformations
    (the inverse is the flow of ``-velocity``).

    Args:
        velocity: ``(spatial_dims, *S)`` velocity in voxels (per unit time).
        num_steps: squaring steps.

    Returns:
        ``(spatial_dims, *S)`` displacement in voxels.
    """
    if velocity.ndim - 1 != velocity.shape[0]:
        raise ValueError(f"velocity must have shape (spatial_dims, *spatial), got {tuple(velocity.shape)}.")
    ddf = velocity / (2**num_steps)
    for _ in range(num_steps):
        ddf = ddf + warp_with_ddf(ddf[None], ddf[None], "border")[0]
    return ddf


def random_velocity_ddf(
    spatial_shape: Sequence[int],
    scales: Sequence[Sequence[float]] = ((12.0, 6.0), (5.0, 2.0)),
    rng: np.random.RandomState | None = None,
    num_steps: int = 7,
    device: torch.device | str | None = None,
    return_inverse: bool = False,
    integration_factor: int = 2,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """
    Random smooth invertible deformation: a sum of B-spline velocity fields at several scales, integrated.

    Args:
        spatial_shape: 2 or 3 sizes.
        scales: ``(control_spacing, max_velocity)`` pairs in voxels; each scale's velocity is a cubic B-spline field
            (:py:func:`monai_sacb.transforms.random_smooth_field`) whose largest vector is drawn uniformly in
            ``[0.3, 1] * max_velocity``. Coarse scales move lobes, fine ones gyri.
        rng: random source (``np.random.RandomState``).
        num_steps: scaling-and-squaring steps.
        device: device of the result.
        return_inverse: also return the inverse deformation (the flow of the negated velocity).
        integration_factor: the velocity is drawn and integrated on a grid this many times coarser, and the
            displacement upsampled (smooth fields lose nothing; 8x less work in 3D at 2).

    Returns:
        ``ddf``, or ``(ddf, inverse_ddf)`` with ``return_inverse``, ``(spatial_dims, *spatial_shape)`` float32 in voxels.
    """
    rng = rng if rng is not None else np.random.RandomState()
    ndim = len(spatial_shape)
    factor = max(1, int(integration_factor))
    coarse = [max(2, (int(size) + factor - 1) // factor) for size in spatial_shape]
    ratio = min((c - 1) / max(int(size) - 1, 1) for c, size in zip(coarse, spatial_shape))
    velocity = torch.zeros((ndim, *coarse), device=device)
    for spacing, peak in scales:
        field = random_smooth_field(coarse, ndim, max(float(spacing) * ratio, 1.0), rng=rng, device=device)
        magnitude = rng.uniform(0.3, 1.0) * float(peak) * ratio
        velocity += field * (magnitude / field.square().sum(0).max().sqrt().clamp(min=1e-12))
    ddf = resize_ddf(integrate_velocity(velocity, num_steps)[None], spatial_shape)[0]
    if not return_inverse:
        return ddf
    return ddf, resize_ddf(integrate_velocity(-velocity, num_steps)[None], spatial_shape)[0]


def random_affine_ddf(
    spatial_shape: Sequence[int],
    rotation: float = 0.0,
    scaling: float = 0.0,
    translation: float = 0.0,
    rng: np.random.RandomState | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """
    Displacement of a random affine map about the volume centre: rotations up to ``rotation`` degrees about each
    axis, per-axis scale factors in ``[1 - scaling, 1 + scaling]``, translations up to ``translation`` voxels.

    Returns:
        ``(spatial_dims, *spatial_shape)`` float32 in voxels (zeros when all three ranges are 0).
    """
    rng = rng if rng is not None else np.random.RandomState()
    ndim = len(spatial_shape)
    angles = np.deg2rad(rng.uniform(-rotation, rotation, size=3 if ndim == 3 else 1))
    matrix = np.eye(ndim)
    planes = [(1, 2), (0, 2), (0, 1)] if ndim == 3 else [(0, 1)]
    for angle, (i, j) in zip(angles, planes):
        rot = np.eye(ndim)
        rot[i, i] = rot[j, j] = math.cos(angle)
        rot[i, j], rot[j, i] = -math.sin(angle), math.sin(angle)
        matrix = rot @ matrix
    matrix = matrix @ np.diag(rng.uniform(1.0 - scaling, 1.0 + scaling, size=ndim))
    shift = rng.uniform(-translation, translation, size=ndim)
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in spatial_shape], indexing="ij")
    centred = torch.stack(axes) - torch.tensor([(s - 1) / 2.0 for s in spatial_shape], dtype=torch.float64).view(
        ndim, *[1] * ndim
    )
    mapped = torch.einsum("ij,j...->i...", torch.as_tensor(matrix), centred)
    ddf = mapped - centred + torch.as_tensor(shift).view(ndim, *[1] * ndim)
    return ddf.float().to(device)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, *S) image blurred by a separable Gaussian of ``sigma`` voxels (zero padding)."""
    if sigma <= 0:
        return image
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    ndim = image.ndim - 1
    out = image[:, None]
    for axis in range(ndim):
        shape = [1, 1] + [1] * ndim
        shape[2 + axis] = kernel.numel()
        padding = [0] * ndim
        padding[axis] = radius
        conv = F.conv3d if ndim == 3 else F.conv2d
        out = conv(out, kernel.view(shape), padding=tuple(padding))
    return out[:, 0]


def random_contrast(
    num_values: int,
    rng: np.random.RandomState,
    mean_range: Sequence[float] = (0.0, 1.0),
    std_range: Sequence[float] = (0.0, 0.08),
    background_zero_prob: float = 0.5,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random Gaussian-mixture parameters ``(means, stds)`` for label values ``0..num_values-1``; with probability
    ``background_zero_prob`` the background (value 0) is black (mean and std 0)."""
    means = torch.as_tensor(rng.uniform(*mean_range, size=num_values), dtype=torch.float32, device=device)
    stds = torch.as_tensor(rng.uniform(*std_range, size=num_values), dtype=torch.float32, device=device)
    if rng.uniform() < background_zero_prob:
        means[0], stds[0] = 0.0, 0.0
    return means, stds


def synthesize_image(
    label: torch.Tensor,
    rng: np.random.RandomState,
    mean_range: Sequence[float] = (0.0, 1.0),
    std_range: Sequence[float] = (0.0, 0.08),
    background_zero_prob: float = 0.5,
    means: torch.Tensor | None = None,
    stds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    A random-contrast image of a label map: each label gets a random mean and standard deviation (a Gaussian
    mixture), voxels are drawn from their label's Gaussian.

    Args:
        label: ``(1, *S)`` integer label map; value 0 is the background.
        rng: random source.
        mean_range: range of the label means.
        std_range: range of the label standard deviations.
        background_zero_prob: probability that the background (label 0) is set to 0, as in skull-stripped images.
        means, stds: per-label parameters indexed by label value (to give two images one contrast); drawn when None.

    Returns:
        ``(image, means, stds)``: the ``(1, *S)`` float32 image and the parameters used, indexed by label value.
    """
    index = label.long()
    num_values = int(index.max()) + 1
    if means is not None and stds is not None and means.numel() < num_values:
        raise ValueError(f"means and stds have {means.numel()} values, the label map needs {num_values}.")
    if means is None or stds is None:
        means, stds = random_contrast(num_values, rng, mean_range, std_range, background_zero_prob, label.device)
    noise = torch.as_tensor(rng.standard_normal(size=tuple(label.shape)), dtype=torch.float32, device=label.device)
    return means[index] + stds[index] * noise, means, stds


class RandLabelSynthPaird(RandomizableTransform, MapTransform):
    """
    Make a registration pair from a label map (and optionally a real image of the same anatomy), SynthMorph-style.

    Both sides are the source deformed by independent random invertible deformations
    (:py:func:`random_velocity_ddf`, plus an optional random affine residue), so neither side is the source. With
    probability ``same_geometry_prob`` both sides share one deformation (the network must then predict no motion).
    Labels are warped with nearest neighbour. Images are, with probability ``real_image_prob`` and when the source
    image is given, the warped real image; otherwise a random-contrast image synthesised from the warped labels
    (:py:func:`synthesize_image`; one contrast for both sides when ``shared_contrast``), blurred. Each side then
    gets independent MR artefacts: a smooth multiplicative bias field, gamma, Gaussian noise, and is rescaled to
    ``[0, 1]`` (1 at the 99.5th percentile of the foreground).

    Input: ``{label_key: (1, *S) integer map, image_key: (1, *S) float image in [0, 1] (optional)}``.
    Output: ``moving_image``, ``fixed_image`` (float32, ``(1, *S)``), ``moving_label``, ``fixed_label``
    (same dtype as the input label); with ``ddf_keys``, the two deformations of the source, in voxels.
    All randomness comes from ``self.R``: ``set_random_state(seed)`` makes a run reproducible.

    Args:
        label_key, image_key: input keys (``image_key`` may be absent from the data or None).
        scales: ``(control_spacing, max_velocity)`` pairs of the velocity field, in voxels.
        affine_rotation, affine_scaling, affine_translation: ranges of the random affine residue (degrees,
            fraction, voxels); 0 disables each.
        same_geometry_prob: probability that both sides share one deformation.
        real_image_prob: probability of using the real image instead of a synthetic contrast.
        shared_contrast: synthetic images of both sides share the label means and standard deviations.
        mean_range, std_range, background_zero_prob: see :py:func:`synthesize_image`.
        blur_sigma_range: range of the Gaussian blur of synthetic images, in voxels.
        bias_field_magnitude: the image is multiplied by ``exp(b * field)``, ``field`` a smooth unit-peak field and
            ``b`` drawn from ``[0, bias_field_magnitude]``.
        bias_field_spacing: control spacing of the bias field, in voxels.
        gamma_range: range of the exponent of ``x ** gamma``.
        noise_std_range: range of the standard deviation of additive Gaussian noise (image in [0, 1]).
        ddf_keys: optional output keys ``(moving, fixed)`` of the two source deformations.
        same_geometry_key: optional output key of a 0-dim float32 flag, 1.0 when both sides share one deformation
            (the pair needs no motion; :py:class:`monai_sacb.losses.RegistrationLoss`'s ``zero_motion_weight``
            reads it), else 0.0.
        keep_source: keep the input keys in the output.
        spacing: voxel size of the label maps in mm. The lengths ``scales``, ``affine_translation`` and
            ``bias_field_spacing`` are then read as voxels of ``REFERENCE_SPACING`` (2 mm, the bundle's grid) and
            multiplied by ``REFERENCE_SPACING / spacing``, so one set of values makes deformations of the same
            size in millimetres on any grid. None or 0: the lengths are voxels of the data as given.
    """

    def __init__(
        self,
        label_key: str = "label",
        image_key: str | None = "image",
        scales: Sequence[Sequence[float]] = ((12.0, 6.0), (5.0, 2.0)),
        affine_rotation: float = 3.0,
        affine_scaling: float = 0.03,
        affine_translation: float = 2.0,
        same_geometry_prob: float = 0.1,
        real_image_prob: float = 0.3,
        shared_contrast: bool = True,
        mean_range: Sequence[float] = (0.0, 1.0),
        std_range: Sequence[float] = (0.0, 0.08),
        background_zero_prob: float = 0.5,
        blur_sigma_range: Sequence[float] = (0.5, 1.2),
        bias_field_magnitude: float = 0.3,
        bias_field_spacing: float = 24.0,
        gamma_range: Sequence[float] = (0.75, 1.33),
        noise_std_range: Sequence[float] = (0.0, 0.03),
        ddf_keys: Sequence[str] | None = None,
        same_geometry_key: str | None = None,
        keep_source: bool = False,
        spacing: float | None = None,
    ) -> None:
        keys = [label_key] + ([image_key] if image_key else [])
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=1.0)
        if not 0.0 <= same_geometry_prob <= 1.0 or not 0.0 <= real_image_prob <= 1.0:
            raise ValueError("same_geometry_prob and real_image_prob must be probabilities in [0, 1].")
        self.label_key, self.image_key = label_key, image_key
        factor = REFERENCE_SPACING / float(spacing) if spacing else 1.0
        self.scales = tuple((float(s) * factor, float(v) * factor) for s, v in scales)
        self.affine = (float(affine_rotation), float(affine_scaling), float(affine_translation) * factor)
        self.same_geometry_prob = float(same_geometry_prob)
        self.real_image_prob = float(real_image_prob)
        self.shared_contrast = bool(shared_contrast)
        self.mean_range, self.std_range = tuple(mean_range), tuple(std_range)
        self.background_zero_prob = float(background_zero_prob)
        self.blur_sigma_range = tuple(blur_sigma_range)
        self.bias_field_magnitude = float(bias_field_magnitude)
        self.bias_field_spacing = float(bias_field_spacing) * factor
        self.gamma_range = tuple(gamma_range)
        self.noise_std_range = tuple(noise_std_range)
        self.ddf_keys = tuple(ddf_keys) if ddf_keys is not None else None
        self.same_geometry_key = same_geometry_key
        self.keep_source = keep_source

    def randomize(self, data: Any = None) -> None:
        # every draw happens in __call__, in a fixed order, from self.R
        pass

    def _deformation(self, spatial_shape: Sequence[int], device: torch.device) -> torch.Tensor:
        ddf = random_velocity_ddf(spatial_shape, self.scales, rng=self.R, device=device)
        if any(self.affine):
            rotation, scaling, translation = self.affine
            affine = random_affine_ddf(spatial_shape, rotation, scaling, translation, rng=self.R, device=device)
            # composed displacement: side(p) = source(q + affine(q)) with q = p + ddf(p)
            ddf = ddf + warp_with_ddf(affine[None], ddf[None], "border")[0]
        return ddf

    def _artefacts(self, image: torch.Tensor) -> torch.Tensor:
        """Bias field, gamma, noise, then rescale to [0, 1] by the 99.5th percentile of the foreground."""
        bias = self.R.uniform(0.0, self.bias_field_magnitude)
        if bias > 0:
            field = random_smooth_field(image.shape[1:], 1, self.bias_field_spacing, rng=self.R, device=image.device)
            image = image * torch.exp(bias * field / field.abs().max().clamp(min=1e-12))
        image = image.clamp(min=0.0)
        top = image.max().clamp(min=1e-6)
        image = (image / top) ** self.R.uniform(*self.gamma_range)
        noise_std = self.R.uniform(*self.noise_std_range)
        if noise_std > 0:
            noise = self.R.standard_normal(size=tuple(image.shape))
            image = image + noise_std * torch.as_tensor(noise, dtype=image.dtype, device=image.device)
        foreground = image[image > 1e-3]
        scale = torch.quantile(foreground[:: max(1, foreground.numel() // 100000)], 0.995) if foreground.numel() else 1
        return (image / scale).clamp(0.0, 1.0)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.label_key not in d:
            raise KeyError(f"RandLabelSynthPaird needs a label map under {self.label_key!r}; keys: {sorted(map(str, d))}.")
        label_in = d[self.label_key]
        label = torch.as_tensor(label_in.as_tensor() if hasattr(label_in, "as_tensor") else label_in)
        if label.ndim not in (3, 4) or label.shape[0] != 1:
            raise ValueError(f"the label map must be (1, *spatial) with 2 or 3 spatial dims, got {tuple(label.shape)}.")
        image = d.get(self.image_key) if self.image_key else None
        if image is not None:
            image = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image).float()
            if image.shape != label.shape:
                raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} shapes differ.")
        spatial_shape, device = label.shape[1:], label.device

        same = self.R.uniform() < self.same_geometry_prob
        real = image is not None and self.R.uniform() < self.real_image_prob
        ddfs = [self._deformation(spatial_shape, device)]
        ddfs.append(ddfs[0] if same else self._deformation(spatial_shape, device))
        means = stds = None
        if self.shared_contrast and not real:
            # one contrast for both sides, drawn for every label value of the source
            num_values = int(label.max()) + 1
            means, stds = random_contrast(
                num_values, self.R, self.mean_range, self.std_range, self.background_zero_prob, device
            )
        for side, ddf in zip(("moving", "fixed"), ddfs):
            side_label = warp_with_ddf(label.float()[None], ddf[None], "zeros", mode="nearest")[0].round()
            if real:
                side_image = warp_with_ddf(image[None], ddf[None], "zeros")[0]
            else:
                side_image, _, _ = synthesize_image(
                    side_label, self.R, self.mean_range, self.std_range, self.background_zero_prob, means, stds
                )
                side_image = _gaussian_blur(side_image, self.R.uniform(*self.blur_sigma_range))
            d[f"{side}_image"] = convert_to_dst_type(self._artefacts(side_image), label_in, dtype=torch.float32)[0]
            d[f"{side}_label"] = convert_to_dst_type(side_label, label_in, dtype=label.dtype)[0]
        if self.ddf_keys is not None:
            for key, ddf in zip(self.ddf_keys, ddfs):
                d[key] = ddf
        if self.same_geometry_key:
            d[self.same_geometry_key] = torch.tensor(1.0 if same else 0.0)
        if not self.keep_source:
            for key in self.keys:
                d.pop(key, None)
        return d
