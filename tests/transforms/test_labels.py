# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai.data import MetaTensor
from monai_sacb.transforms import (
    IXI_FREESURFER_LABELS,
    IXI_LABEL_NAMES,
    IXI_LABELS,
    LPBA40_LABELS,
    RemapLabels,
    RemapLabelsd,
)


def test_generic_remap_numpy_and_torch():
    remap = RemapLabels(values=[7, 3, 250])
    arr = np.array([[0, 3, 7], [250, 4, 7]], dtype=np.uint8)
    out = remap(arr)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 2, 1], [3, 0, 1]])
    t = torch.tensor([[7.0, 3.0, 3.5, -1.0]])
    out = remap(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
    out = RemapLabels([7, 3], dtype=np.int64)(arr)
    assert out.dtype == np.int64 and out.max() == 2


def test_metatensor_keeps_its_geometry():
    affine = torch.diag(torch.tensor([1.5, 2.0, 3.0, 1.0], dtype=torch.float64))
    label = MetaTensor(torch.tensor([[[[21.0, 182.0], [166.0, 181.0]]]]), affine=affine)
    out = RemapLabels("lpba40")(label)
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, affine)
    torch.testing.assert_close(out.as_tensor(), torch.tensor([[[[1.0, 0.0], [54.0, 0.0]]]]))


def test_lpba40_preset():
    assert len(LPBA40_LABELS) == 54 and LPBA40_LABELS[0] == 21 and LPBA40_LABELS[-1] == 166
    codes = np.arange(0, 256)
    out = RemapLabels("lpba40")(codes)
    kept = set(LPBA40_LABELS)
    for code, value in zip(codes, out):
        assert value == (LPBA40_LABELS.index(code) + 1 if code in kept else 0)
    assert out[[181, 182, 35, 100, 120, 167]].tolist() == [0, 0, 0, 0, 0, 0]
    assert out[[21, 34, 41, 92, 101, 122, 161, 166]].tolist() == [1, 14, 15, 44, 45, 48, 49, 54]


def test_ixi_presets():
    assert len(IXI_LABELS) == len(IXI_FREESURFER_LABELS) == len(IXI_LABEL_NAMES) == 30
    # TransMorph pickle values: 4 (Left-Inf-Lat-Vent), 17 (Left-Accumbens), 19 (Left-vessel) are not evaluated
    values = np.array([0, 1, 2, 4, 13, 17, 19, 36, 45])
    np.testing.assert_array_equal(RemapLabels("ixi")(values), [0, 1, 2, 0, 12, 0, 0, 30, 0])
    assert IXI_LABEL_NAMES[11] == "Brain-Stem" and IXI_LABEL_NAMES[29] == "Right-choroid-plexus"
    # the same structures by FreeSurfer code: 16 brain stem, 63 right choroid plexus, 5 inf-lat-vent dropped
    np.testing.assert_array_equal(RemapLabels("ixi_freesurfer")(np.array([16, 63, 5, 2, 41])), [12, 30, 0, 1, 18])


def test_dictionary_version():
    data = {"moving_label": np.array([3, 9]), "fixed_label": torch.tensor([9, 3]), "moving_image": np.array([3.0, 9.0])}
    out = RemapLabelsd(keys=["moving_label", "fixed_label"], values=[9, 3])(data)
    np.testing.assert_array_equal(out["moving_label"], [2, 1])
    torch.testing.assert_close(out["fixed_label"], torch.tensor([1, 2]))
    np.testing.assert_array_equal(out["moving_image"], [3.0, 9.0])
    with pytest.raises(KeyError):
        RemapLabelsd(keys="fixed_label", values="ixi")({"moving_label": np.zeros(2)})
    assert "fixed_label" not in RemapLabelsd(keys="fixed_label", values="ixi", allow_missing_keys=True)({})


def test_bad_values():
    with pytest.raises(ValueError, match="ixi, ixi_freesurfer, lpba40"):
        RemapLabels("oasis")
    with pytest.raises(ValueError, match="repeat"):
        RemapLabels([1, 1])
    with pytest.raises(ValueError, match="at least one"):
        RemapLabels([])
