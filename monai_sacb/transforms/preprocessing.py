# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import (
    Compose,
    DivisiblePadd,
    EnsureTyped,
    NormalizeIntensityd,
    Orientationd,
    ResampleToMatchd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.transforms.transform import MapTransform

from monai_sacb.transforms.check import CheckInputsd, CheckLabelGridd, CheckPaird
from monai_sacb.transforms.io import LoadPaird

__all__ = ["pair_preprocessing", "IntensityNormalized", "INTENSITY_OPTIONS"]

INTENSITY_OPTIONS = ("percentile", "minmax", "zscore", "none")


class IntensityNormalized(MapTransform):
    """
    Intensity normalisation of registration images chosen by name, so that a bundle config or command line
    switches it with one value (``--intensity zscore``, ``--intensity "(-500, 800)"`` for CT):

    - ``"percentile"``: the 0.5th-99.5th percentile to [0, 1], clipped (robust to a few hot voxels, unlike
      min-max; ``monai.transforms.ScaleIntensityRangePercentilesd``);
    - ``"minmax"``: [0, 1] (``ScaleIntensityd``);
    - ``"zscore"``: zero mean, unit variance (``NormalizeIntensityd``);
    - ``(a_min, a_max)``: a window mapped to [0, 1] with clipping (``ScaleIntensityRanged``), e.g. CT;
    - ``"none"`` or ``None``: unchanged (images already scaled; ``"none"`` because ``monai.bundle run`` drops
      command-line overrides whose value is None).

    Args:
        keys: the image keys (never label maps).
        method: one of the above.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ValueError: an unknown ``method``, with the valid ones.
    """

    def __init__(
        self, keys: KeysCollection, method: str | Sequence[float] | None = "percentile", allow_missing_keys: bool = True
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.method = method
        self.transform = self._build(method)

    def _build(self, method: str | Sequence[float] | None) -> MapTransform | None:
        keys, missing = self.keys, self.allow_missing_keys
        if method is None:
            return None
        if isinstance(method, str):
            name = method.lower()
            if name == "percentile":
                return ScaleIntensityRangePercentilesd(
                    keys, lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True, allow_missing_keys=missing
                )
            if name == "minmax":
                return ScaleIntensityd(keys, minv=0.0, maxv=1.0, allow_missing_keys=missing)
            if name == "zscore":
                return NormalizeIntensityd(keys, allow_missing_keys=missing)
            if name == "none":
                return None
        elif len(method) == 2:
            a_min, a_max = (float(v) for v in method)
            return ScaleIntensityRanged(keys, a_min, a_max, b_min=0.0, b_max=1.0, clip=True, allow_missing_keys=missing)
        raise ValueError(
            f"unknown intensity {method!r}: use one of {', '.join(map(repr, INTENSITY_OPTIONS))}, "
            "a window (a_min, a_max) mapped to [0, 1] with clipping (e.g. (-500, 800) for CT), or None."
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return dict(data) if self.transform is None else self.transform(data)


def pair_preprocessing(
    image_keys: Sequence[str] = ("moving_image", "fixed_image"),
    label_keys: Sequence[str] | None = ("moving_label", "fixed_label"),
    spacing: Sequence[float] | float | None = None,
    orientation: str | None = "RAS",
    intensity: str | Sequence[float] | None = "percentile",
    divisible: Sequence[int] | int | None = 16,
    resample_to_fixed: bool = False,
    load: bool = True,
    reader: type[ImageReader] | str | None = None,
    check: bool = True,
    check_affine: bool = True,
    affine_atol: float = 1e-3,
    spatial_dims: int | None = 3,
    channels: int | None = 1,
) -> Compose:
    """
    Build the preprocessing of a registration pair so that moving and fixed (and their labels) end on one
    voxel grid, ready for ``SACBNet``:

        LoadPaird (errors name key and file) -> CheckInputsd (each file as read) -> Orientationd
        -> CheckLabelGridd (each label on its own image's grid) -> Spacingd (images bilinear, labels nearest)
        -> [ResampleToMatchd moving onto fixed] -> intensity normalisation (images only)
        -> DivisiblePadd(k=divisible) -> EnsureTyped(float32) -> CheckPaird

    Every input is checked where it enters, before anything is resampled or scaled, and refused with a message
    naming the key, the file and the fix: dimensionality and channels of each file, NaN/infinite values counted
    in the file, label maps integer-valued, each label on the grid of its own image (shape, world position).

    Input: a dictionary of file paths (or, with ``load=False``, channel-first arrays/MetaTensors) under
    ``image_keys`` (moving first, fixed second) and optional ``label_keys`` (same order; missing labels are
    skipped). Output: MetaTensors of shape (1, *spatial), float32, spatial sizes divisible by ``divisible``,
    affines in RAS millimetres; labels keep integer values (nearest-neighbour resampling, zero padding).

    Args:
        image_keys: (moving, fixed) image keys.
        label_keys: (moving, fixed) label keys, or None for image-only pairs.
        spacing: output voxel size in mm (one number or one per axis), None to keep the file's grid.
            E.g. 2.0 for a fast CPU run; None for data already resampled (IXI, LPBA40, Learn2Reg).
        orientation: axis codes such as ``"RAS"``, None to keep the file's axis order.
        intensity: ``"percentile"`` (default: 0.5th-99.5th percentile to [0, 1], clipped), ``"minmax"``
            ([0, 1]), ``"zscore"`` (zero mean, unit variance), a window ``(a_min, a_max)`` mapped to [0, 1]
            with clipping (CT, e.g. ``(-500, 800)``), or None.
        divisible: pad (symmetric, zeros) so every spatial size is divisible by this; SACB-Net needs 16.
            None or 0 to skip.
        resample_to_fixed: resample the moving image and label onto the fixed image's grid (world
            coordinates). Needed when the pair comes from different grids; with False, such pairs are
            rejected by the final check.
        load: start with ``LoadPaird`` (paths in the dictionary). False when the items are already arrays.
        reader: reader for ``LoadPaird`` (e.g. ``"NibabelReader"``, ``"ITKReader"``); None lets MONAI choose.
        check: check the inputs (:py:class:`CheckInputsd`, :py:class:`CheckLabelGridd` at the start) and end with
            :py:class:`CheckPaird` (same grid, labels match, finite intensities).
        check_affine, affine_atol: passed to ``CheckPaird`` (``check_affine`` also to ``CheckLabelGridd``).
        spatial_dims: spatial dimensions every file must have (None: not checked); 3 for the 3D network.
        channels: channels every image must have after loading (None: not checked); the network's
            ``in_channels``. Label maps must have one.

    Returns:
        a ``monai.transforms.Compose``; usable as ``_target_`` in a bundle config.
    """
    image_keys = list(image_keys)
    label_keys = list(label_keys) if label_keys else []
    if len(image_keys) != 2 or (label_keys and len(label_keys) != 2):
        raise ValueError(
            f"expecting (moving, fixed) keys, got image_keys={image_keys}, label_keys={label_keys or None}."
        )
    all_keys = image_keys + label_keys
    modes = ["bilinear"] * len(image_keys) + ["nearest"] * len(label_keys)
    transforms: list = []
    if load:
        transforms.append(LoadPaird(image_keys, reader=reader, ensure_channel_first=True))
        if label_keys:
            transforms.append(LoadPaird(label_keys, reader=reader, ensure_channel_first=True, allow_missing_keys=True))
    if check:
        # files can be anything; arrays made in memory (synthetic pairs) are label maps by construction
        max_labels = 1000 if load else None
        transforms.append(
            CheckInputsd(
                image_keys, label_keys or None, spatial_dims=spatial_dims, channels=channels, max_labels=max_labels
            )
        )
    if orientation:
        transforms.append(Orientationd(all_keys, axcodes=orientation, labels=None, allow_missing_keys=True))
    if check and label_keys:
        transforms.append(CheckLabelGridd(image_keys, label_keys, check_affine=check_affine))
    if spacing is not None:
        transforms.append(Spacingd(all_keys, pixdim=spacing, mode=modes, allow_missing_keys=True))
    if resample_to_fixed:
        moving_keys = [image_keys[0]] + label_keys[:1]
        transforms.append(
            ResampleToMatchd(
                moving_keys,
                key_dst=image_keys[1],
                mode=["bilinear", "nearest"][: len(moving_keys)],
                padding_mode=["border", "zeros"][: len(moving_keys)],
                allow_missing_keys=True,
            )
        )
    if intensity is not None:
        transforms.append(IntensityNormalized(image_keys, intensity))
    if divisible:
        transforms.append(DivisiblePadd(all_keys, k=divisible, allow_missing_keys=True))
    transforms.append(EnsureTyped(all_keys, dtype=torch.float32, allow_missing_keys=True))
    if check:
        transforms.append(
            CheckPaird(image_keys, label_keys or None, check_affine=check_affine, affine_atol=affine_atol)
        )
    return Compose(transforms)
