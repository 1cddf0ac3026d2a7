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
from monai.transforms import MapTransform, Pad, RandomizableTransform
from monai.utils import GridSampleMode, GridSamplePadMode, ensure_tuple_rep

from monai_sacb.networks.blocks.warp import warp_with_ddf
from monai_sacb.transforms.utils import matching_output_keys

__all__ = ["RandDivisiblePadd", "Warpd"]


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


class RandDivisiblePadd(RandomizableTransform, MapTransform):
    """
    Randomly widen the field of view of a registration pair with background, so that a network trained on tightly
    cropped images does not depend on how much background surrounds the anatomy (SACB-Net's instance norms and
    k-means see the whole volume, so the background margin changes their statistics). With probability ``prob``,
    each spatial axis grows by ``k * n`` voxels, ``n`` drawn from ``0, ..., max_multiples``, split between its two
    ends at random; every key gets the same padding (by :py:class:`monai.transforms.Pad`, which also updates a
    MetaTensor's affine), so the pair stays on one grid and sizes divisible by ``k`` stay divisible by ``k``.

    Shapes: each key (C, *S), 2D or 3D, all keys the same spatial size S; output (C, *(S + padding)).

    Args:
        keys: the keys to pad together, e.g. ``["moving_image", "fixed_image", "moving_label", "fixed_label"]``.
        prob: probability of padding a pair.
        k: the padding of each axis is a multiple of ``k`` (16 keeps SACB-Net's size divisibility).
        max_multiples: the largest multiple of ``k`` added to one axis.
        mode: ``torch.nn.functional.pad`` / ``numpy.pad`` mode; "constant" pads with ``value`` (default 0, the
            background of images normalised to [0, 1] and of label maps), like ``DivisiblePadd`` at inference.
        allow_missing_keys: don't raise if a key is missing.
        pad_kwargs: passed to :py:class:`monai.transforms.Pad`, e.g. ``value``.

    Raises:
        ValueError: ``prob`` outside [0, 1], ``k`` < 1, ``max_multiples`` < 0, or keys of different spatial sizes.
    """

    backend = Pad.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        k: int = 16,
        max_multiples: int = 2,
        mode: str = "constant",
        allow_missing_keys: bool = False,
        **pad_kwargs: Any,
    ) -> None:
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}.")
        if int(k) != k or k < 1 or int(max_multiples) != max_multiples or max_multiples < 0:
            raise ValueError(
                f"k must be an integer >= 1 and max_multiples one >= 0, got k={k}, max_multiples={max_multiples}."
            )
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.k, self.max_multiples = int(k), int(max_multiples)
        self.padder = Pad(mode=mode, **pad_kwargs)
        self._to_pad: list[tuple[int, int]] = []

    def randomize(self, data: Any = None) -> None:
        """Draws whether to pad and, if so, the padding of each of ``data`` (the number of spatial dims) axes."""
        super().randomize(None)
        self._to_pad = [(0, 0)]
        if not self._do_transform:
            return
        for _ in range(int(data)):
            total = self.k * int(self.R.randint(0, self.max_multiples + 1))
            before = int(self.R.randint(0, total + 1))
            self._to_pad.append((before, total - before))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        sizes = {key: tuple(d[key].shape[1:]) for key in keys}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"RandDivisiblePadd pads a pair on one grid, but its keys have different spatial sizes {sizes}: "
                "resample them onto one grid first (e.g. ResampleToMatchd)."
            )
        self.randomize(len(sizes[keys[0]]))
        if not self._do_transform or not any(sum(p) for p in self._to_pad):
            return d
        for key in keys:
            d[key] = self.padder(d[key], to_pad=self._to_pad)
        return d
