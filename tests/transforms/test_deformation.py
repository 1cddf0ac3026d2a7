# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.blocks import Warp

from monai_sacb.transforms.deformation import (
    RandSmoothDeformd,
    RandSyntheticPaird,
    random_smooth_ddf,
    random_smooth_field,
)


def _jacobian_det(ddf: torch.Tensor) -> torch.Tensor:
    """Forward-difference Jacobian determinant of p -> p + ddf(p), 3D."""
    crop = [s - 1 for s in ddf.shape[1:]]
    rows = []
    for i in range(3):
        row = [torch.diff(ddf[i], dim=j)[: crop[0], : crop[1], : crop[2]] for j in range(3)]
        rows.append(torch.stack(row))
    jac = torch.stack(rows) + torch.eye(3)[:, :, None, None, None]
    return torch.linalg.det(jac.permute(2, 3, 4, 0, 1))


def _blocky_labels(shape: tuple[int, ...], block: int = 8, num_labels: int = 4, seed: int = 0) -> torch.Tensor:
    rng = np.random.RandomState(seed)
    coarse = rng.randint(0, num_labels, size=[s // block for s in shape])
    for axis in range(len(shape)):
        coarse = coarse.repeat(block, axis=axis)
    return torch.as_tensor(coarse, dtype=torch.int64)[None]


def _monai_warp(img: torch.Tensor, ddf: torch.Tensor, mode: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Warp(mode=mode, padding_mode="border")(img[None].float(), ddf[None])[0]


@pytest.mark.parametrize("shape", [(40, 48, 32), (64, 48)])
def test_ddf_shape_bound_and_smoothness(shape):
    max_disp, spacing = 4.0, 16
    ddf = random_smooth_ddf(shape, max_disp, spacing, rng=3)
    assert ddf.shape == (len(shape), *shape) and ddf.dtype == torch.float32
    norm = ddf.square().sum(0).sqrt()
    assert norm.max().item() == pytest.approx(max_disp, rel=1e-5)
    # a C2 B-spline field: neighbouring voxels differ by about max_disp / spacing, never by a jump
    for axis in range(len(shape)):
        assert ddf.diff(dim=axis + 1).abs().max().item() < 2.0 * max_disp / spacing
        second = ddf.diff(n=2, dim=axis + 1).abs().max().item()
        assert second < 0.5 * max_disp / spacing


def test_ddf_invertible_for_modest_magnitude():
    for seed in range(3):
        ddf = random_smooth_ddf((48, 56, 48), 6.0, 16, rng=seed)
        assert _jacobian_det(ddf).min().item() > 0.0


def test_zero_magnitude_is_identity():
    ddf = random_smooth_ddf((16, 20, 12), 0.0, 8, rng=0)
    assert torch.count_nonzero(ddf) == 0
    img = torch.rand(1, 16, 20, 12)
    label = _blocky_labels((16, 20, 12), block=4)
    t = RandSmoothDeformd(keys="image", label_keys="label", max_displacement=0.0)
    out = t({"image": img, "label": label})
    assert torch.allclose(out["image"], img, atol=1e-5)
    assert torch.equal(out["label"], label)


def test_random_sources_are_reproducible():
    shape = (24, 20, 16)
    assert torch.equal(random_smooth_ddf(shape, 3.0, 8, rng=7), random_smooth_ddf(shape, 3.0, 8, rng=7))
    assert not torch.equal(random_smooth_ddf(shape, 3.0, 8, rng=7), random_smooth_ddf(shape, 3.0, 8, rng=8))
    a = random_smooth_ddf(shape, 3.0, 8, rng=torch.Generator().manual_seed(1))
    b = random_smooth_ddf(shape, 3.0, 8, rng=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    a = random_smooth_ddf(shape, 3.0, 8, rng=np.random.default_rng(2))
    b = random_smooth_ddf(shape, 3.0, 8, rng=np.random.default_rng(2))
    assert torch.equal(a, b)
    field = random_smooth_field(shape, channels=2, control_spacing=6.5, rng=0)
    assert field.shape == (2, *shape)
    with pytest.raises(TypeError):
        random_smooth_ddf(shape, 3.0, 8, rng="seed")


def test_labels_stay_aligned_with_image():
    shape = (48, 48, 40)
    label = _blocky_labels(shape, block=8, num_labels=3)
    t = RandSmoothDeformd(keys="image", label_keys="label", max_displacement=5.0, control_spacing=16, ddf_key="ddf")
    t.set_random_state(0)
    out = t({"image": label.float(), "label": label})
    assert out["label"].dtype == torch.int64
    assert not torch.equal(out["label"], label)  # it did deform
    agree = (out["image"].round().long() == out["label"]).float().mean().item()
    assert agree > 0.95  # only voxels on block boundaries, blurred by bilinear interpolation, may differ
    # the stored field follows monai.networks.blocks.Warp's convention exactly
    assert out["ddf"].shape == (3, *shape)
    assert torch.allclose(out["image"], _monai_warp(label, out["ddf"], "bilinear"), atol=1e-4)
    assert torch.equal(out["label"], _monai_warp(label, out["ddf"], "nearest").long())


def test_deformd_is_seeded_and_keeps_meta():
    shape = (24, 24, 16)
    img = MetaTensor(torch.rand(1, *shape), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    label = _blocky_labels(shape, block=4)
    outs = []
    for _ in range(2):
        t = RandSmoothDeformd(keys="image", label_keys="label", max_displacement=(1.0, 3.0), control_spacing=8)
        t.set_random_state(42)
        outs.append(t({"image": img, "label": label}))
    assert torch.equal(outs[0]["image"], outs[1]["image"])
    assert torch.equal(outs[0]["label"], outs[1]["label"])
    assert isinstance(outs[0]["image"], MetaTensor)
    assert torch.equal(outs[0]["image"].affine, img.affine)


def test_deformd_prob_zero_leaves_data_untouched():
    img = torch.rand(1, 16, 16, 16)
    t = RandSmoothDeformd(keys="image", prob=0.0, max_displacement=4.0, ddf_key="ddf")
    out = t({"image": img})
    assert out["image"] is img
    assert out["ddf"].shape == (3, 16, 16, 16) and torch.count_nonzero(out["ddf"]) == 0


def test_synthetic_pair_keys_shapes_and_ranges():
    shape = (32, 40, 32)
    image = torch.rand(1, *shape)
    label = _blocky_labels(shape, block=8, num_labels=5)
    maker = RandSyntheticPaird(max_displacement=(2.0, 4.0), control_spacing=12, ddf_keys=("moving_ddf", "fixed_ddf"))
    maker.set_random_state(0)
    out = maker({"image": image, "label": label, "id": "subject0"})
    assert set(out) == {"moving_image", "fixed_image", "moving_label", "fixed_label", "moving_ddf", "fixed_ddf", "id"}
    for key in ("moving_image", "fixed_image", "moving_label", "fixed_label"):
        assert out[key].shape == (1, *shape)
    for key in ("moving_image", "fixed_image"):
        assert out[key].dtype == torch.float32
        assert out[key].min() >= 0.0 and out[key].max() <= 1.0
    assert out["moving_label"].dtype == torch.int64
    assert set(out["moving_label"].unique().tolist()) <= set(label.unique().tolist())
    assert not torch.equal(out["moving_label"], out["fixed_label"])
    assert not torch.allclose(out["moving_image"], out["fixed_image"])
    # each label is its own side's warp of the subject, so it stays on that side's image
    for side in ("moving", "fixed"):
        assert torch.equal(out[f"{side}_label"], _monai_warp(label, out[f"{side}_ddf"], "nearest").long())


def test_synthetic_pair_is_seeded():
    shape = (24, 24, 24)
    data = {"image": torch.rand(1, *shape), "label": _blocky_labels(shape, block=6)}
    a = RandSyntheticPaird(control_spacing=8).set_random_state(5)(data)
    b = RandSyntheticPaird(control_spacing=8).set_random_state(5)(data)
    c = RandSyntheticPaird(control_spacing=8).set_random_state(6)(data)
    for key in ("moving_image", "fixed_image", "moving_label", "fixed_label"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["moving_image"], c["moving_image"])


def test_synthetic_pair_without_label_or_intensity_changes():
    shape = (16, 16, 16)
    image = torch.rand(1, *shape)
    maker = RandSyntheticPaird(
        label_key=None,
        max_displacement=0.0,
        gamma_range=(1.0, 1.0),
        contrast_range=(1.0, 1.0),
        bias_field_magnitude=0.0,
        noise_std_range=(0.0, 0.0),
        keep_source=True,
    )
    out = maker({"image": image})
    assert set(out) == {"image", "moving_image", "fixed_image"}
    assert torch.allclose(out["moving_image"], image, atol=1e-5)
    assert torch.allclose(out["fixed_image"], image, atol=1e-5)


def test_spacing_scales_the_deformation_lengths_to_the_grid():
    reference = RandSyntheticPaird()
    coarse = RandSyntheticPaird(spacing=8.0)  # 4x the reference voxel: lengths in voxels shrink 4x
    assert coarse.max_displacement == tuple(v / 4 for v in reference.max_displacement)
    assert coarse.control_spacing == reference.control_spacing / 4
    assert RandSyntheticPaird(spacing=None).max_displacement == reference.max_displacement
