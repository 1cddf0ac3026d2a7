# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

__all__ = ["CheckPaird"]

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
