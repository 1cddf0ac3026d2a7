# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Label remapping: the listed label values become ``1..N`` in list order, every other value becomes 0.

Presets (pass the name as ``values``):

- ``"ixi"``: the 30 structures of the TransMorph IXI evaluation, as label values of the TransMorph pickles.
  Those pickles do not store FreeSurfer codes but indices into TransMorph's table of 46 FreeSurfer labels
  (``TRANSMORPH_IXI_FREESURFER_CODES``, from ``process_label`` in TransMorph's IXI ``utils.py``); its
  ``dice_val_VOI`` evaluates indices ``IXI_LABELS`` =
  1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 21, 22, 23, 25, 26, 27, 28, 29, 30, 31, 32, 34, 36,
  the 30 structures of ``IXI/Anatomical_Structures.md`` in the TransMorph repository (inferior lateral
  ventricles, accumbens and vessels are left out). ``IXI_LABEL_NAMES`` names them in output order.
- ``"ixi_freesurfer"``: the same 30 structures as FreeSurfer ``aseg`` codes (``IXI_FREESURFER_LABELS``),
  for label maps that carry FreeSurfer codes.
- ``"lpba40"``: the 54 LPBA40 structures with codes 21..166 (``LPBA40_LABELS``); cerebellum (181),
  brainstem (182) and anything else become background.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch

from monai.config import DtypeLike, KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms.transform import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

__all__ = [
    "TRANSMORPH_IXI_FREESURFER_CODES",
    "IXI_LABELS",
    "IXI_FREESURFER_LABELS",
    "IXI_LABEL_NAMES",
    "LPBA40_LABELS",
    "LABEL_PRESETS",
    "RemapLabels",
    "RemapLabelsd",
]

# value i of a TransMorph IXI label map is the FreeSurfer code TRANSMORPH_IXI_FREESURFER_CODES[i]
TRANSMORPH_IXI_FREESURFER_CODES = (
    0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 30, 31, 41, 42, 43, 44, 46, 47,
    49, 50, 51, 52, 53, 54, 58, 60, 62, 63, 72, 77, 80, 85, 251, 252, 253, 254, 255,
)  # fmt: skip
IXI_LABELS = (
    1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 21, 22, 23, 25, 26, 27, 28, 29, 30, 31, 32, 34, 36,
)  # fmt: skip
IXI_FREESURFER_LABELS = tuple(TRANSMORPH_IXI_FREESURFER_CODES[i] for i in IXI_LABELS)
IXI_LABEL_NAMES = (
    "Left-Cerebral-White-Matter", "Left-Cerebral-Cortex", "Left-Lateral-Ventricle", "Left-Cerebellum-White-Matter",
    "Left-Cerebellum-Cortex", "Left-Thalamus", "Left-Caudate", "Left-Putamen", "Left-Pallidum", "3rd-Ventricle",
    "4th-Ventricle", "Brain-Stem", "Left-Hippocampus", "Left-Amygdala", "CSF", "Left-VentralDC",
    "Left-choroid-plexus", "Right-Cerebral-White-Matter", "Right-Cerebral-Cortex", "Right-Lateral-Ventricle",
    "Right-Cerebellum-White-Matter", "Right-Cerebellum-Cortex", "Right-Thalamus", "Right-Caudate", "Right-Putamen",
    "Right-Pallidum", "Right-Hippocampus", "Right-Amygdala", "Right-VentralDC", "Right-choroid-plexus",
)  # fmt: skip
LPBA40_LABELS = (
    *range(21, 35), *range(41, 51), *range(61, 69), *range(81, 93), 101, 102, 121, 122, *range(161, 167),
)  # fmt: skip
LABEL_PRESETS = {"ixi": IXI_LABELS, "ixi_freesurfer": IXI_FREESURFER_LABELS, "lpba40": LPBA40_LABELS}


def _label_values(values: Sequence[int | float] | str) -> tuple:
    if isinstance(values, str):
        if values.lower() not in LABEL_PRESETS:
            raise ValueError(f"Unknown label preset {values!r}; valid presets: {', '.join(LABEL_PRESETS)}.")
        return tuple(LABEL_PRESETS[values.lower()])
    values = tuple(values)
    if not values:
        raise ValueError("values must list at least one label value.")
    if len(set(values)) != len(values):
        raise ValueError(f"values must not repeat a label value, got {values}.")
    return values


class RemapLabels(Transform):
    """
    Map ``values[i]`` to ``i + 1`` and every other value to 0 (unlike :py:class:`monai.transforms.MapLabelValue`,
    which leaves unlisted values unchanged). Values are compared exactly: remap label maps before any resampling
    other than nearest-neighbour.

    Args:
        values: the label values to keep, in output order, or a preset name from ``LABEL_PRESETS``
            (``"ixi"``, ``"ixi_freesurfer"``, ``"lpba40"``).
        dtype: output dtype; by default that of the input.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, values: Sequence[int | float] | str, dtype: DtypeLike | torch.dtype = None) -> None:
        self.values = _label_values(values)
        self.dtype = dtype
        order = np.argsort(self.values, kind="stable")
        self._sorted = torch.as_tensor(np.asarray(self.values, dtype=np.float64)[order])
        self._targets = torch.as_tensor(order + 1, dtype=torch.int64)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        img_t, *_ = convert_data_type(img, torch.Tensor, wrap_sequence=True)
        plain = img_t.as_tensor() if hasattr(img_t, "as_tensor") else img_t
        # float64 holds every integer label code exactly, whatever the input dtype
        flat = plain.detach().reshape(-1).to(torch.float64)
        sorted_values = self._sorted.to(flat.device)
        index = torch.searchsorted(sorted_values, flat).clamp_(max=len(self.values) - 1)
        hit = sorted_values[index] == flat
        out = torch.where(hit, self._targets.to(flat.device)[index], torch.zeros_like(index))
        out = out.reshape(plain.shape)
        dtype = self.dtype if self.dtype is not None else img.dtype
        out, *_ = convert_to_dst_type(out, dst=img, dtype=dtype)
        return out


class RemapLabelsd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`RemapLabels`, e.g. for both label maps of a pair::

        RemapLabelsd(keys=["moving_label", "fixed_label"], values="lpba40")

    Args:
        keys: keys of the label maps to remap.
        values: label values in output order, or a preset name (``"ixi"``, ``"ixi_freesurfer"``, ``"lpba40"``).
        dtype: output dtype; by default that of the input.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = RemapLabels.backend

    def __init__(
        self,
        keys: KeysCollection,
        values: Sequence[int | float] | str,
        dtype: DtypeLike | torch.dtype = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.remapper = RemapLabels(values=values, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.remapper(d[key])
        return d
