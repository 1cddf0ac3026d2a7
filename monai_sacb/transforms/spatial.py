# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection, SequenceStr
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform
from monai.utils import GridSampleMode, GridSamplePadMode, ensure_tuple_rep

from monai_sacb.networks.blocks.warp import warp_with_ddf
from monai_sacb.transforms.utils import matching_output_keys

__all__ = ["Warpd"]


class Warpd(MapTransform):
    """
    Warp the arrays under ``keys`` with the displacement field under ``ddf_key``:
    ``out(p) = img(p + ddf(p))`` (backward warping, ddf in voxels, channel i along spatial axis i, sampling with
    ``align_corners=True``), by :py:func:`monai_sacb.networks.blocks.warp_with_ddf`, the same function as
    :py:class:`monai.networks.blocks.Warp`.

    Shapes (no batch dimension, as in any dictionary transform): image (C, *spatial), ddf
    (spatial_dims, *spatial) with the same spatial size, 2D or 3D. The computation runs on the ddf's device, in
    the image's dtype when it is float32 or float64 and in float32 otherwise.
    Images use ``mode="bilinear"``; use ``"nearest"`` for label maps, which then keep their values exactly
    (integer dtypes are restored). Warping with ``"nearest"`` is not differentiable.

    The output is a ``MetaTensor`` on the grid of ``ref_key`` (default the fixed image): its affine, metadata
    and applied operations are copied from there (so ``SaveImaged`` writes it in the fixed image's geometry and
    ``Invertd`` can undo the fixed image's preprocessing), except ``filename_or_obj``, which stays the warped
    image's own so that saved files are named after the moving image. Without a reference MetaTensor, the
    ddf's and then the image's own metadata are used.

    Args:
        keys: keys of the arrays to warp, e.g. ``["moving_image", "moving_label"]``.
        ddf_key: key of the displacement field. Defaults to ``"ddf"``.
        mode: ``"bilinear"`` or ``"nearest"`` (or ``"bicubic"``, 2D only), one or one per key.
        padding_mode: ``"border"`` (default), ``"zeros"`` or ``"reflection"``, one or one per key: what is
            sampled where ``p + ddf(p)`` leaves the image.
        ref_key: key whose geometry the outputs take; None to skip. Defaults to ``"fixed_image"``.
        output_keys: where to write the results, one per key; None overwrites ``keys`` in place.
        allow_missing_keys: don't raise if a key in ``keys`` is missing (e.g. an optional label).
    """

    def __init__(
        self,
        keys: KeysCollection,
        ddf_key: str = "ddf",
        mode: SequenceStr = GridSampleMode.BILINEAR,
        padding_mode: SequenceStr = GridSamplePadMode.BORDER,
        ref_key: str | None = "fixed_image",
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ddf_key = ddf_key
        self.mode = [GridSampleMode(m).value for m in ensure_tuple_rep(mode, len(self.keys))]
        self.padding_mode = [GridSamplePadMode(p).value for p in ensure_tuple_rep(padding_mode, len(self.keys))]
        self.ref_key = ref_key
        self.output_keys = matching_output_keys(self.keys, output_keys)

    @staticmethod
    def _warp(image: torch.Tensor, ddf: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
        dtype = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
        x = image.to(device=ddf.device)
        if x.is_floating_point():
            x = x.to(dtype)  # float16/bfloat16 images are warped, and returned, in float32
        # integer images come back rounded in their own dtype (warp_with_ddf)
        return warp_with_ddf(x[None], ddf.to(dtype)[None], padding_mode=padding_mode, mode=mode)[0]

    def _reference(self, d: Mapping[Hashable, Any], image: Any) -> MetaTensor | None:
        for candidate in (d.get(self.ref_key) if self.ref_key is not None else None, d.get(self.ddf_key), image):
            if isinstance(candidate, MetaTensor):
                return candidate
        return None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.ddf_key not in d:
            raise KeyError(f"displacement field key {self.ddf_key!r} not found; available keys: {list(d)}.")
        ddf = torch.as_tensor(d[self.ddf_key])
        ddf = ddf.as_tensor() if isinstance(ddf, MetaTensor) else ddf
        for key, out_key, mode, padding_mode in self.key_iterator(d, self.output_keys, self.mode, self.padding_mode):
            image = d[key]
            raw = torch.as_tensor(image)
            raw = raw.as_tensor() if isinstance(raw, MetaTensor) else raw
            spatial_dims = raw.ndim - 1
            if spatial_dims not in (2, 3) or tuple(ddf.shape) != (spatial_dims, *raw.shape[1:]):
                raise ValueError(
                    f"{key} has shape {tuple(raw.shape)} and {self.ddf_key} has shape {tuple(ddf.shape)}; expecting "
                    f"an image (C, *spatial) with 2 or 3 spatial dims and a ddf (spatial_dims, *spatial) of the "
                    "same spatial size, without batch dimension."
                )
            out = self._warp(raw, ddf, mode, padding_mode)
            ref = self._reference(d, image)
            if ref is not None and get_track_meta():
                meta = copy.deepcopy(ref.meta)  # includes the affine
                if isinstance(image, MetaTensor) and "filename_or_obj" in image.meta:
                    meta["filename_or_obj"] = image.meta["filename_or_obj"]
                out = MetaTensor(out, meta=meta)
                out.applied_operations = copy.deepcopy(ref.applied_operations)
            d[out_key] = out
        return d
