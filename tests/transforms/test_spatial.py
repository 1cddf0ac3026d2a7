# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.blocks import Warp

from monai_sacb.transforms import RandDivisiblePadd, Warpd
from monai_sacb.transforms.spatial import Warpd as SpatialWarpd

SPATIAL = (12, 10, 8)


@pytest.fixture
def item():
    torch.manual_seed(0)
    fixed_affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    fixed_affine[:3, 3] = torch.tensor([-10.0, 4.0, 7.0], dtype=torch.float64)
    return {
        "moving_image": MetaTensor(torch.rand(1, *SPATIAL), meta={"filename_or_obj": "moving.nii.gz"}),
        "moving_label": MetaTensor(
            torch.randint(0, 5, (1, *SPATIAL)).float(), meta={"filename_or_obj": "moving_seg.nii.gz"}
        ),
        "fixed_image": MetaTensor(
            torch.rand(1, *SPATIAL), affine=fixed_affine, meta={"filename_or_obj": "fixed.nii.gz"}
        ),
        "ddf": torch.zeros(3, *SPATIAL),
    }


def _warp(keys=("moving_image", "moving_label"), mode=("bilinear", "nearest"), **kwargs):
    return Warpd(list(keys), ddf_key="ddf", mode=list(mode), **kwargs)


def test_zero_ddf_is_identity(item):
    out = _warp()(item)
    assert torch.allclose(out["moving_image"].as_tensor(), item["moving_image"].as_tensor(), atol=1e-6)
    assert torch.equal(out["moving_label"].as_tensor(), item["moving_label"].as_tensor())


@pytest.mark.parametrize("axis, shift", [(0, 2), (1, -3), (2, 1)])
def test_integer_shift_moves_by_exactly_that_many_voxels(item, axis, shift):
    item["ddf"][axis] = float(shift)
    out = _warp()(item)
    n = SPATIAL[axis]
    # warped(p) = moving(p + shift) wherever p + shift is inside the image
    dst = slice(max(0, -shift), n - max(0, shift))
    src = slice(max(0, shift), n - max(0, -shift))
    index_dst = [slice(None)] * 4
    index_src = [slice(None)] * 4
    index_dst[axis + 1], index_src[axis + 1] = dst, src
    warped_label = out["moving_label"].as_tensor()
    assert torch.equal(warped_label[tuple(index_dst)], item["moving_label"].as_tensor()[tuple(index_src)])
    assert torch.allclose(
        out["moving_image"].as_tensor()[tuple(index_dst)],
        item["moving_image"].as_tensor()[tuple(index_src)],
        atol=1e-5,
    )


def test_labels_remain_integer_under_nearest(item):
    torch.manual_seed(1)
    item["ddf"] = 2.5 * torch.randn(3, *SPATIAL)
    item["int_label"] = item["moving_label"].as_tensor().to(torch.int64)
    out = _warp(keys=("moving_label", "int_label", "moving_image"), mode=("nearest", "nearest", "bilinear"))(item)
    label = out["moving_label"]
    assert torch.equal(label, label.round())
    assert set(torch.unique(label).tolist()) <= set(range(5))
    assert out["int_label"].dtype == torch.int64
    assert torch.equal(out["int_label"].float().as_tensor(), label.as_tensor())
    # bilinear produces values between neighbours, not only the original ones
    assert not torch.equal(out["moving_image"], item["moving_image"])


def test_output_takes_the_fixed_geometry_and_keeps_the_moving_name(item):
    out = _warp()(item)
    for key, name in (("moving_image", "moving.nii.gz"), ("moving_label", "moving_seg.nii.gz")):
        assert isinstance(out[key], MetaTensor)
        assert torch.equal(out[key].affine, item["fixed_image"].affine)
        assert out[key].meta["filename_or_obj"] == name
    assert item["fixed_image"].meta["filename_or_obj"] == "fixed.nii.gz"  # reference not modified


def test_output_keys_keep_the_inputs(item):
    item["ddf"][0] = 1.0
    out = _warp(output_keys=["warped_image", "warped_label"])(item)
    assert out["moving_image"] is item["moving_image"]
    assert out["warped_image"].shape == item["moving_image"].shape
    assert not torch.equal(out["warped_label"].as_tensor(), item["moving_label"].as_tensor())


def test_missing_optional_label_and_plain_tensors():
    image = torch.arange(2 * 6 * 5, dtype=torch.float32).reshape(2, 6, 5)  # 2 channels, 2D
    ddf = torch.zeros(2, 6, 5)
    ddf[1] = 1.0
    out = Warpd(["image", "label"], mode=["bilinear", "nearest"], allow_missing_keys=True)({"image": image, "ddf": ddf})
    assert "label" not in out
    assert not isinstance(out["image"], MetaTensor)
    assert torch.allclose(out["image"][:, :, :-1], image[:, :, 1:], atol=1e-5)


def test_errors(item):
    item["ddf"] = torch.zeros(1, 3, *SPATIAL)  # batched ddf
    with pytest.raises(ValueError, match="without batch dimension"):
        _warp()(item)
    with pytest.raises(KeyError, match="'flow' not found"):
        Warpd("moving_image", ddf_key="flow")(item)
    with pytest.raises(ValueError, match="one entry per key"):
        Warpd(["a", "b"], output_keys=["c"])


def test_importable_from_the_spatial_module():
    assert SpatialWarpd is Warpd


@pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp")
@pytest.mark.parametrize("mode, padding_mode", [("bilinear", "border"), ("nearest", "zeros"), ("bilinear", "reflection")])
def test_equals_monai_warp(item, mode, padding_mode):
    torch.manual_seed(2)
    item["ddf"] = 3 * torch.randn(3, *SPATIAL)
    out = Warpd("moving_image", mode=mode, padding_mode=padding_mode)(item)["moving_image"]
    expected = Warp(mode=mode, padding_mode=padding_mode)(item["moving_image"].as_tensor()[None], item["ddf"][None])[0]
    torch.testing.assert_close(out.as_tensor(), expected, rtol=0, atol=1e-6)


def test_dtypes_follow_the_image(item):
    torch.manual_seed(3)
    item["ddf"] = 1.5 * torch.randn(3, *SPATIAL, dtype=torch.float64)
    item["int16"] = (1000 * item["moving_image"].as_tensor()).to(torch.int16)
    item["half"] = item["moving_image"].as_tensor().half()
    item["double"] = item["moving_image"].as_tensor().double()
    out = Warpd(["int16", "half", "double"])(item)
    assert out["int16"].dtype == torch.int16  # bilinear values rounded into the image's integer dtype
    assert out["half"].dtype == torch.float32  # warped in float32
    assert out["double"].dtype == torch.float64
    as_float = Warpd("int16")({"int16": item["int16"].float(), "ddf": item["ddf"]})["int16"]
    assert torch.equal(out["int16"], as_float.round().to(torch.int16))


def test_applied_operations_come_from_the_reference(item):
    item["fixed_image"].applied_operations = [{"class": "Spacingd", "extra_info": {}}]
    out = _warp()(item)
    assert out["moving_image"].applied_operations == item["fixed_image"].applied_operations
    assert out["moving_image"].applied_operations is not item["fixed_image"].applied_operations


def _pad_item(shape=(1, 16, 32, 16)):
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([5.0, -6.0, 7.0], dtype=torch.float64)
    image = MetaTensor(torch.rand(*shape, generator=torch.Generator().manual_seed(0)) + 0.5, affine=affine)
    label = MetaTensor(torch.randint(1, 5, shape, dtype=torch.int16), affine=affine.clone())
    return {"image": image, "label": label}


def test_rand_divisible_pad_pads_every_key_alike_by_multiples_of_k():
    item = _pad_item()
    pad = RandDivisiblePadd(["image", "label"], prob=1.0, k=16, max_multiples=2)
    pad.set_random_state(1)
    totals, befores = set(), set()
    for _ in range(40):
        out = pad(item)
        grown = [o - i for o, i in zip(out["image"].shape[1:], item["image"].shape[1:])]
        assert out["label"].shape == out["image"].shape and out["label"].dtype == torch.int16
        assert all(g in (0, 16, 32) for g in grown)
        # the content sits unchanged at the drawn offset, background (0) everywhere else
        before = [int(b) for b, _ in pad._to_pad[1:]]
        crop = tuple(slice(b, b + s) for b, s in zip(before, item["image"].shape[1:]))
        for key in ("image", "label"):
            assert torch.equal(out[key].as_tensor()[(slice(None), *crop)], item[key].as_tensor())
            total = float(item[key].as_tensor().abs().sum())
            assert float(out[key].as_tensor().abs().sum()) == pytest.approx(total, rel=1e-5)
            # the world position of every original voxel is unchanged: the origin moved back by `before` voxels
            expected = item[key].affine[:3, 3] - item[key].affine[:3, :3] @ torch.tensor(before, dtype=torch.float64)
            assert torch.allclose(out[key].affine[:3, 3], expected)
        totals.update(grown)
        befores.update(before)
    assert totals == {0, 16, 32}  # every allowed size is drawn
    assert min(befores) == 0 and max(befores) > 16  # offsets anywhere in [0, total]


def test_rand_divisible_pad_is_seeded_and_prob_zero_is_the_identity():
    item = _pad_item()
    first, second = (RandDivisiblePadd(["image", "label"], prob=0.5) for _ in range(2))
    first.set_random_state(7)
    second.set_random_state(7)
    shapes = [(first(item)["image"].shape, second(item)["image"].shape) for _ in range(10)]
    assert all(a == b for a, b in shapes)
    assert len({a for a, _ in shapes}) > 1  # sometimes padded, sometimes not
    never = RandDivisiblePadd(["image", "label"], prob=0.0)
    assert all(torch.equal(never(item)["image"].as_tensor(), item["image"].as_tensor()) for _ in range(5))


def test_rand_divisible_pad_refuses_bad_arguments_and_pairs_on_two_grids():
    with pytest.raises(ValueError, match="prob"):
        RandDivisiblePadd("image", prob=1.5)
    with pytest.raises(ValueError, match="k must be"):
        RandDivisiblePadd("image", k=0)
    with pytest.raises(ValueError, match="max_multiples"):
        RandDivisiblePadd("image", max_multiples=-1)
    item = _pad_item()
    item["label"] = MetaTensor(torch.zeros(1, 16, 32, 32))
    with pytest.raises(ValueError, match="different spatial sizes.*ResampleToMatchd"):
        RandDivisiblePadd(["image", "label"], prob=1.0)(item)
