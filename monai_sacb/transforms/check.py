# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

__all__ = ["CheckPaird", "CheckInputsd", "CheckLabelGridd"]

_FIX_GRID = (
    "Registration needs moving and fixed on one voxel grid: preprocess both with the same orientation and "
    "spacing and resample the moving image onto the fixed grid, e.g. "
    "monai_sacb.transforms.pair_preprocessing(..., resample_to_fixed=True) (MONAI ResampleToMatchd)."
)


def _source(data: Mapping[Hashable, Any], key: Hashable) -> str:
    value = data[key]
    meta = value.meta if isinstance(value, MetaTensor) else data.get(f"{key}_meta_dict", {})
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return f"'{name}'" if name else "<in-memory array>"


def _affine(data: Mapping[Hashable, Any], key: Hashable) -> np.ndarray | None:
    value = data[key]
    if isinstance(value, MetaTensor):
        return value.affine.detach().cpu().numpy()
    meta = data.get(f"{key}_meta_dict")
    if isinstance(meta, Mapping) and meta.get("affine") is not None:
        return np.asarray(meta["affine"])
    return None


def _spatial_shape(data: Mapping[Hashable, Any], key: Hashable) -> tuple[int, ...]:
    shape = tuple(data[key].shape)
    if len(shape) < 2:
        raise ValueError(
            f"{key} ({_source(data, key)}) has shape {shape}; expecting channel-first (C, *spatial). "
            "Add EnsureChannelFirstd (or LoadImaged(ensure_channel_first=True))."
        )
    return shape[1:]


def _count_non_finite(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return 0 if not value.is_floating_point() else int((~torch.isfinite(value)).sum())
    array = np.asarray(value)
    return 0 if not np.issubdtype(array.dtype, np.floating) else int((~np.isfinite(array)).sum())


class CheckPaird(MapTransform):
    """
    Check that a registration pair is usable and raise a ``ValueError`` that names the keys, the files
    (from the ``filename_or_obj`` metadata) and the fix otherwise. It changes nothing in the data.

    Checks, for channel-first arrays (C, *spatial):

        - every image in ``keys`` (usually moving, fixed) has the spatial shape of the first one and,
          when both carry an affine, the same affine within ``affine_atol`` (world units, mm);
        - every label in ``label_keys`` has the spatial shape (and affine) of its image, the image at the
          same position in ``keys``; labels are optional: missing label keys are skipped;
        - images and labels contain no NaN or infinite values.

    Put it last in the preprocessing, after spacing, orientation and padding.

    Args:
        keys: image keys that must share one grid. Defaults to ``("moving_image", "fixed_image")``.
        label_keys: label keys, one per image key in the same order, or None. Defaults to
            ``("moving_label", "fixed_label")``.
        check_affine: also compare affines. Set False only for data aligned in voxel space whose headers
            disagree (e.g. preprocessed volumes saved with arbitrary origins).
        affine_atol: absolute tolerance on every affine entry (mm). Defaults to 1e-3.
        check_finite: reject NaN / infinite intensities.
        allow_missing_keys: don't raise if an image key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = ("moving_image", "fixed_image"),
        label_keys: KeysCollection | None = ("moving_label", "fixed_label"),
        check_affine: bool = True,
        affine_atol: float = 1e-3,
        check_finite: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys: Sequence[Hashable] = ensure_tuple(label_keys) if label_keys is not None else ()
        if self.label_keys and len(self.label_keys) != len(self.keys):
            raise ValueError(
                f"label_keys {self.label_keys} must have one entry per image key {self.keys} (same order)."
            )
        self.check_affine = check_affine
        self.affine_atol = float(affine_atol)
        self.check_finite = check_finite

    def _same_grid(self, d: Mapping[Hashable, Any], ref: Hashable, key: Hashable, what: str, fix: str) -> None:
        ref_shape, shape = _spatial_shape(d, ref), _spatial_shape(d, key)
        if ref_shape != shape:
            raise ValueError(
                f"{what}: {key} ({_source(d, key)}) has spatial shape {shape} but {ref} ({_source(d, ref)}) "
                f"has {ref_shape}. {fix}"
            )
        if not self.check_affine:
            return
        ref_affine, affine = _affine(d, ref), _affine(d, key)
        if ref_affine is None or affine is None:
            return
        if ref_affine.shape != affine.shape or not np.allclose(ref_affine, affine, rtol=0.0, atol=self.affine_atol):
            raise ValueError(
                f"{what}: {key} ({_source(d, key)}) and {ref} ({_source(d, ref)}) have the same shape {shape} but "
                f"different affines (tolerance {self.affine_atol} mm):\n{key}:\n{np.round(affine, 4)}\n"
                f"{ref}:\n{np.round(ref_affine, 4)}\n{fix} If the pair is already aligned voxel by voxel and only "
                "the headers differ, use check_affine=False."
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        images = list(self.key_iterator(d))
        present = [(i, k) for i, k in enumerate(self.keys) if k in d]
        labels = [(self.label_keys[i], k) for i, k in present if self.label_keys and self.label_keys[i] in d]
        if self.check_finite:
            for key in images + [label for label, _ in labels]:
                bad = _count_non_finite(d[key])
                if bad:
                    raise ValueError(
                        f"{key} ({_source(d, key)}) has {bad} NaN or infinite voxel values. Fix the file, or "
                        "replace them before preprocessing (e.g. a Lambdad with torch.nan_to_num)."
                    )
        for other in images[1:]:
            self._same_grid(d, other, images[0], "moving and fixed are not on one grid", _FIX_GRID)
        for label, image in labels:
            self._same_grid(
                d,
                image,
                label,
                "label does not match its image",
                f"The label map must be defined on the grid of {image}: check that the datalist pairs the right "
                "files and that labels are resampled with the image (mode 'nearest').",
            )
        return d


def _pairs_of(
    keys: Sequence[Hashable], label_keys: Sequence[Hashable], d: Mapping[Hashable, Any]
) -> list[tuple[Hashable, Hashable]]:
    """(label, image) key pairs present in ``d``: the label at position i belongs to the image at position i."""
    return [(label, image) for image, label in zip(keys, label_keys) if image in d and label in d]


def _file_shape(data: Mapping[Hashable, Any], key: Hashable) -> str:
    """``"file shape (30, 28, 34, 3), read as (3, 30, 28, 34) (channels first)"`` from the loader's metadata."""
    value = data[key]
    loaded = tuple(value.shape)
    meta = value.meta if isinstance(value, MetaTensor) else {}
    spatial = meta.get("spatial_shape")
    if spatial is None:
        return f"shape {loaded} (channels first)"
    shape = [int(s) for s in np.asarray(spatial).ravel()]
    channel_dim = meta.get("original_channel_dim")
    if isinstance(channel_dim, (int, np.integer)) and not isinstance(channel_dim, bool):
        at = int(channel_dim) if channel_dim >= 0 else len(shape) + 1 + int(channel_dim)
        shape.insert(at, loaded[0])
    return f"file shape {tuple(shape)}, read as {loaded} (channels first)"


class CheckInputsd(MapTransform):
    """
    Check every image and label map where it enters the preprocessing, on the values as read (before any
    resampling or intensity scaling), and raise a ``ValueError`` naming the key, the file and the fix:

        - the number of spatial dimensions (``spatial_dims``) and of channels (``channels``) of each file: a 2D
          slice, a 4D series (read as channels) or a multi-channel file is refused by name, not later by the
          network with a shape that names no file;
        - NaN / infinite values, counted in the file (after intensity scaling one NaN can spread to the
          whole image);
        - label maps hold integer values (within ``1e-3``) and at most ``max_labels`` distinct values (counted
          on a subsample): an intensity image given as a label is refused instead of being written as a
          label map of hundreds of values.

    It changes nothing in the data. Missing keys are skipped (labels are optional).

    Args:
        keys: image keys.
        label_keys: label keys, or None.
        spatial_dims: expected spatial dimensions of every file (None: not checked).
        channels: expected channels of every image after ``ensure_channel_first`` (None: not checked); label
            maps must always have one channel.
        check_finite: refuse NaN / infinite values.
        max_labels: most distinct values a label map may hold, counted on a subsample of at most about 100,000
            voxels (None: not checked).
    """

    def __init__(
        self,
        keys: KeysCollection = ("moving_image", "fixed_image"),
        label_keys: KeysCollection | None = ("moving_label", "fixed_label"),
        spatial_dims: int | None = 3,
        channels: int | None = 1,
        check_finite: bool = True,
        max_labels: int | None = 1000,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.label_keys: tuple[Hashable, ...] = ensure_tuple(label_keys) if label_keys is not None else ()
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.check_finite = check_finite
        self.max_labels = max_labels

    def _check_shape(self, d: Mapping[Hashable, Any], key: Hashable, channels: int | None, what: str) -> None:
        shape = tuple(d[key].shape)
        if self.spatial_dims is not None and len(shape) - 1 != self.spatial_dims:
            raise ValueError(
                f"{key} ({_source(d, key)}) is {len(shape) - 1}D ({_file_shape(d, key)}), but the network "
                f"registers {self.spatial_dims}D {what}s. Give a {self.spatial_dims}D file (one volume, one "
                "channel) for every image and label of the pair, e.g. convert a 2D slice or stack to a volume, "
                "or drop singleton axes with nibabel (nib.squeeze_image)."
            )
        if channels is None or shape[0] == channels:
            return
        found = f"{key} ({_source(d, key)}) has {shape[0]} channels ({_file_shape(d, key)})"
        if what != "image":
            raise ValueError(
                f"{found}; a label map has one (integer label values in one volume). Give the label map of the "
                "image, not a 4D or one-hot file."
            )
        hint = (
            "A 4D file (a time series or several volumes) is read with its 4th axis as channels: keep one volume "
            "(e.g. nibabel image.slicer[..., 0])"
            if shape[0] > 1
            else "Give a file with that many channels"
        )
        raise ValueError(
            f"{found}, but the network takes {channels} per image. {hint}, or build the network with "
            f"in_channels={shape[0]} and the preprocessing with channels={shape[0]} when the channels belong together."
        )

    def _check_finite(self, d: Mapping[Hashable, Any], key: Hashable) -> None:
        bad = _count_non_finite(d[key])
        if bad:
            raise ValueError(
                f"{key} ({_source(d, key)}) has {bad} NaN or infinite voxel values in the file. Fix the file, or "
                "replace them before preprocessing (e.g. a Lambdad with torch.nan_to_num)."
            )

    def _check_label_values(self, d: Mapping[Hashable, Any], key: Hashable) -> None:
        value = d[key]
        values = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(np.asarray(value))
        if values.dtype == torch.bool or not (values.is_floating_point() or values.is_complex()):
            floating = None
        else:
            floating = values
        if floating is not None:
            fraction = (floating - torch.round(floating)).abs() > 1e-3
            if bool(fraction.any()):
                count = int(fraction.sum())
                raise ValueError(
                    f"{key} ({_source(d, key)}) is not a label map: {count} of its {floating.numel()} voxels have "
                    f"non-integer values (e.g. {float(floating[fraction][0]):.4g}). A label map holds integer "
                    "region codes; check that the datalist gives the segmentation and not an intensity image."
                )
        if self.max_labels is None:
            return
        flat = values.reshape(-1)
        step = max(1, flat.numel() // 100_000)  # a subsample is enough to tell an image from a label map
        distinct = int(torch.unique(flat[::step]).numel())
        if distinct > self.max_labels:
            raise ValueError(
                f"{key} ({_source(d, key)}) holds {distinct} or more distinct values, more than max_labels="
                f"{self.max_labels}: it looks like an intensity image, not a label map. Check the datalist entry "
                "(or raise max_labels when the labels really are that many)."
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._check_shape(d, key, self.channels, "image")
            if self.check_finite:
                self._check_finite(d, key)
        for key in self.label_keys:
            if key not in d:
                continue
            self._check_shape(d, key, 1, "label map")
            if self.check_finite:
                self._check_finite(d, key)
            self._check_label_values(d, key)
        return d


def _world_corners(affine: np.ndarray, spatial: Sequence[int]) -> np.ndarray:
    """World coordinates (2^dims, dims) of the corner voxel centres of a grid."""
    dims = len(spatial)
    corners = np.array(list(itertools.product(*[(0, s - 1) for s in spatial])), dtype=float)
    homogeneous = np.concatenate([corners, np.ones((len(corners), 1))], axis=1)
    return (homogeneous @ affine[: dims + 1, : dims + 1].T)[:, :dims]


def _box_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of the world box of corners ``a`` covered by the box of corners ``b``."""
    lo_a, hi_a, lo_b, hi_b = a.min(0), a.max(0), b.min(0), b.max(0)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0.0, None)
    extent = np.maximum(hi_a - lo_a, 1e-6)
    return float(np.prod(np.minimum(inter, extent) / extent))


class CheckLabelGridd(MapTransform):
    """
    Check that every label map lies on the grid of its own image before anything is resampled, and raise a
    ``ValueError`` naming both files and the fix otherwise. A label of another shape, or one whose voxels are
    more than half a voxel away from the image's in world coordinates (a wrong file, or a header from another
    space: a label 1000 mm away would otherwise be resampled into an empty map), is refused; the message gives
    the largest distance in mm and how much the two world boxes overlap.

    It changes nothing in the data; missing labels are skipped. Use it after loading (and reorientation: both
    are reoriented alike), before ``Spacingd`` and ``ResampleToMatchd``.

    Args:
        keys: image keys.
        label_keys: label keys, one per image key in the same order.
        check_affine: compare world positions; False for data whose headers are known to be unreliable (then
            only the shapes are compared).
    """

    def __init__(
        self,
        keys: KeysCollection = ("moving_image", "fixed_image"),
        label_keys: KeysCollection = ("moving_label", "fixed_label"),
        check_affine: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.label_keys: tuple[Hashable, ...] = ensure_tuple(label_keys)
        if len(self.label_keys) != len(self.keys):
            raise ValueError(
                f"label_keys {self.label_keys} must have one entry per image key {self.keys} (same order)."
            )
        self.check_affine = check_affine

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for label, image in _pairs_of(self.keys, self.label_keys, d):
            fix = (
                f"A label map must be saved on the grid of its image (same shape and affine): check that "
                f"{label} is the segmentation of {image} (in the datalist entry, or --{label} for one pair)."
            )
            shape, label_shape = _spatial_shape(d, image), _spatial_shape(d, label)
            if shape != label_shape:
                raise ValueError(
                    f"{label} ({_source(d, label)}) has spatial shape {label_shape} but its image {image} "
                    f"({_source(d, image)}) has {shape}; labels are checked before any resampling. {fix}"
                )
            image_affine, label_affine = _affine(d, image), _affine(d, label)
            if not self.check_affine or image_affine is None or label_affine is None:
                continue
            image_corners = _world_corners(image_affine, shape)
            label_corners = _world_corners(label_affine, shape)
            distance = float(np.linalg.norm(image_corners - label_corners, axis=1).max())
            dims = len(shape)
            voxel = float(np.linalg.norm(image_affine[:dims, :dims], axis=0).min())
            if distance > 0.5 * voxel:
                overlap = _box_overlap(image_corners, label_corners)
                raise ValueError(
                    f"{label} ({_source(d, label)}) is not on the grid of its image {image} ({_source(d, image)}): "
                    f"same shape {shape}, but its voxels lie up to {distance:.1f} mm from the image's (voxel size "
                    f"{voxel:.3g} mm), and their world boxes overlap {100 * overlap:.0f} %. {fix}\n"
                    f"{label} affine:\n{np.round(label_affine, 4)}\n{image} affine:\n{np.round(image_affine, 4)}"
                )
        return d
