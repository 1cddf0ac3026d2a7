# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_sacb.transforms import CheckInputsd, CheckLabelGridd, CheckPaird, LoadPaird, pair_preprocessing

# voxel axes (i, j, k) -> world: i goes inferior->superior (1.2 mm), j right->left (1.5 mm, flipped),
# k posterior->anterior (2.5 mm): permuted, flipped and anisotropic, with a translation.
AFFINE = np.array(
    [
        [0.0, -1.5, 0.0, 30.0],
        [0.0, 0.0, 2.5, -40.0],
        [1.2, 0.0, 0.0, 12.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SHAPE = (18, 22, 13)


def _volume(seed, shape=SHAPE):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    blob = np.exp(-4 * (grid**2).sum(0))
    image = (800 * blob + 50 * rng.random(shape)).astype(np.float32)
    label = np.zeros(shape, np.int16)
    label[grid[0] > 0.2] = 1
    label[(grid[1] < -0.3) & (label == 0)] = 2
    label[(grid**2).sum(0) < 0.3] = 7
    return image, label


def _write(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


@pytest.fixture
def pair(tmp_path):
    item = {}
    for role, seed in (("moving", 0), ("fixed", 1)):
        image, label = _volume(seed)
        item[f"{role}_image"] = _write(tmp_path / f"{role}_img.nii.gz", image)
        item[f"{role}_label"] = _write(tmp_path / f"{role}_seg.nii.gz", label)
    return item


def _messages(error):
    """All messages along the exception chain (MONAI's Compose wraps transform errors)."""
    parts = []
    while error is not None:
        parts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


def test_round_trip_on_one_grid(pair):
    out = pair_preprocessing(spacing=2.0)(pair)
    moving, fixed = out["moving_image"], out["fixed_image"]
    assert isinstance(moving, MetaTensor) and moving.dtype == torch.float32
    assert moving.shape == fixed.shape == out["moving_label"].shape == out["fixed_label"].shape
    assert moving.shape[0] == 1 and all(s % 16 == 0 for s in moving.shape[1:])
    assert torch.allclose(moving.affine, fixed.affine)
    assert torch.allclose(out["moving_label"].affine, moving.affine)
    # RAS, 2 mm: diagonal, positive
    assert torch.allclose(moving.affine[:3, :3], 2.0 * torch.eye(3, dtype=moving.affine.dtype))
    # intensities scaled to [0, 1]; labels keep their integer codes
    assert moving.min() >= 0.0 and moving.max() <= 1.0 and moving.max() > 0.9
    for key in ("moving_label", "fixed_label"):
        values = torch.unique(out[key])
        assert torch.equal(values, values.round())
        assert set(values.tolist()) <= {0.0, 1.0, 2.0, 7.0} and 7.0 in values.tolist()
    assert str(moving.meta["filename_or_obj"]).endswith("moving_img.nii.gz")


def test_native_grid_keeps_the_spacing(pair):
    out = pair_preprocessing(spacing=None, intensity="minmax")(pair)
    image = out["fixed_image"]
    # RAS order of the file's axes: R-L is j (1.5 mm), A-P is k (2.5 mm), S-I is i (1.2 mm)
    assert np.allclose(np.abs(np.diag(image.affine.numpy()[:3, :3])), (1.5, 2.5, 1.2))
    assert all(s % 16 == 0 for s in image.shape[1:])
    assert image.shape[1:] == (32, 16, 32)  # (22, 13, 18) padded up
    assert float(image.min()) == 0.0


def test_labels_are_optional(pair):
    images_only = {k: v for k, v in pair.items() if k.endswith("image")}
    out = pair_preprocessing(spacing=2.0)(images_only)
    assert "moving_label" not in out and out["moving_image"].shape == out["fixed_image"].shape


@pytest.mark.parametrize("intensity", ["zscore", (0.0, 400.0), None])
def test_intensity_options(pair, intensity):
    out = pair_preprocessing(spacing=2.0, divisible=None, intensity=intensity)(pair)
    image = out["moving_image"]
    if intensity == "zscore":
        assert abs(float(image.mean())) < 1e-3
    elif intensity is None:
        assert float(image.max()) > 100
    else:
        assert float(image.min()) >= 0.0 and float(image.max()) == pytest.approx(1.0)


def test_bad_options():
    with pytest.raises(ValueError, match="unknown intensity 'robust'"):
        pair_preprocessing(intensity="robust")
    with pytest.raises(ValueError, match="moving, fixed"):
        pair_preprocessing(image_keys=("image",))


def test_pair_on_different_grids_is_rejected_or_resampled(tmp_path, pair):
    image, label = _volume(2, shape=(20, 22, 13))
    shifted = AFFINE.copy()
    shifted[:3, 3] += (3.0, -2.0, 1.0)
    pair["fixed_image"] = _write(tmp_path / "other_fixed.nii.gz", image, shifted)
    pair["fixed_label"] = _write(tmp_path / "other_fixed_seg.nii.gz", label, shifted)
    with pytest.raises(Exception) as info:
        pair_preprocessing(spacing=None)(pair)
    message = _messages(info.value)
    assert "not on one grid" in message
    assert "moving_img.nii.gz" in message and "other_fixed.nii.gz" in message
    assert "resample_to_fixed=True" in message

    out = pair_preprocessing(spacing=None, resample_to_fixed=True)(pair)
    assert out["moving_image"].shape == out["fixed_image"].shape
    assert torch.allclose(out["moving_image"].affine, out["fixed_image"].affine)
    values = torch.unique(out["moving_label"])
    assert torch.equal(values, values.round()) and set(values.tolist()) <= {0.0, 1.0, 2.0, 7.0}


def test_missing_file_names_key_and_path(pair, tmp_path):
    pair["fixed_image"] = str(tmp_path / "nowhere.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"fixed_image: file not found: .*nowhere\.nii\.gz"):
        LoadPaird(["moving_image", "fixed_image"])(pair)
    with pytest.raises(Exception) as info:
        pair_preprocessing()(pair)
    assert "nowhere.nii.gz" in _messages(info.value)


def test_corrupt_file_names_key_and_path(pair, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"this is not a nifti file")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(open(pair["fixed_image"], "rb").read()[:200])
    for path in (broken, truncated):
        pair["moving_label"] = str(path)
        with pytest.raises(RuntimeError, match=rf"moving_label: cannot read .*{path.name}.*corrupt"):
            LoadPaird(["moving_label", "fixed_label"], ensure_channel_first=True)(pair)
        with pytest.raises(Exception) as info:
            pair_preprocessing()(pair)
        assert path.name in _messages(info.value)


def _meta_pair(shape_moving=(1, 16, 16, 16), shape_fixed=(1, 16, 16, 16)):
    def tensor(shape, name, affine=None):
        return MetaTensor(torch.rand(shape), affine=affine, meta={"filename_or_obj": name})

    return {
        "moving_image": tensor(shape_moving, "m.nii.gz"),
        "fixed_image": tensor(shape_fixed, "f.nii.gz"),
        "moving_label": tensor(shape_moving, "m_seg.nii.gz"),
        "fixed_label": tensor(shape_fixed, "f_seg.nii.gz"),
    }


def test_check_pair_accepts_a_good_pair_unchanged():
    data = _meta_pair()
    out = CheckPaird()(data)
    assert all(out[k] is data[k] for k in data)
    del data["fixed_label"]
    CheckPaird()(data)


def test_check_pair_shape_mismatch_names_both_files():
    expected = r"not on one grid: moving_image \('m.nii.gz'\).*but fixed_image \('f.nii.gz'\)"
    with pytest.raises(ValueError, match=expected):
        CheckPaird()(_meta_pair(shape_fixed=(1, 16, 16, 32)))


def test_check_pair_affine_tolerance():
    data = _meta_pair()
    data["fixed_image"].affine = torch.diag(torch.tensor([1.0, 1.0, 1.0005, 1.0], dtype=torch.float64))
    data["fixed_label"].affine = data["fixed_image"].affine
    CheckPaird()(data)  # within 1e-3 mm
    data["fixed_image"].affine[0, 3] = 0.5
    data["fixed_label"].affine = data["fixed_image"].affine
    with pytest.raises(ValueError, match="different affines"):
        CheckPaird()(data)
    CheckPaird(check_affine=False)(data)


def test_check_pair_label_shape_names_the_label_file():
    data = _meta_pair()
    data["moving_label"] = MetaTensor(torch.zeros(1, 16, 16, 15), meta={"filename_or_obj": "m_seg.nii.gz"})
    with pytest.raises(ValueError, match=r"label does not match its image: moving_label \('m_seg.nii.gz'\)"):
        CheckPaird()(data)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_pair_non_finite_names_key_and_file(bad):
    data = _meta_pair()
    data["fixed_image"][0, 3, 4, 5] = bad
    with pytest.raises(ValueError, match=r"fixed_image \('f.nii.gz'\) has 1 NaN or infinite"):
        CheckPaird()(data)


def test_check_pair_nan_in_file_is_reported_after_preprocessing(pair, tmp_path):
    image, _ = _volume(0)
    image[2, 2, 2] = np.nan
    pair["moving_image"] = _write(tmp_path / "nan_moving.nii.gz", image)
    with pytest.raises(Exception) as info:
        pair_preprocessing(spacing=None, intensity=None)(pair)
    message = _messages(info.value)
    assert "moving_image ('" in message and "nan_moving.nii.gz" in message and "NaN" in message


def test_warped_output_inverts_to_the_original_fixed_grid(pair):
    from monai.transforms import Invertd

    from monai_sacb.transforms import Warpd

    preprocessing = pair_preprocessing(spacing=2.0)
    data = preprocessing(pair)
    data["ddf"] = torch.zeros(3, *data["fixed_image"].shape[1:])
    data = Warpd(["moving_label"], mode="nearest", output_keys=["warped_label"])(data)
    restored = Invertd("warped_label", transform=preprocessing, orig_keys="fixed_label", nearest_interp=True)(data)
    fixed_file = nib.load(pair["fixed_label"])
    assert restored["warped_label"].shape[1:] == fixed_file.shape
    assert np.allclose(restored["warped_label"].affine.numpy(), fixed_file.affine, atol=1e-4)


# ------------------------------------------------------------------------- checks where the inputs enter


def _entry(affine=None, label_affine=None, shape=(1, 12, 10, 8), label_shape=None, label_values=None):
    image = MetaTensor(torch.rand(shape), affine=affine, meta={"filename_or_obj": "img.nii.gz"})
    label = torch.zeros(label_shape or shape) if label_values is None else label_values
    label = MetaTensor(label, affine=label_affine if label_affine is not None else affine)
    label.meta["filename_or_obj"] = "seg.nii.gz"
    return {"moving_image": image, "moving_label": label}


def test_label_grid_accepts_half_a_voxel_and_refuses_more():
    affine = torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0], dtype=torch.float64))
    near = affine.clone()
    near[0, 3] = 0.7  # under half of the 1.5 mm voxel: the same voxels
    check = CheckLabelGridd(("moving_image", "fixed_image"), ("moving_label", "fixed_label"))
    check(_entry(affine, near))
    far = affine.clone()
    far[0, 3] = 3.0
    with pytest.raises(ValueError, match=r"seg\.nii\.gz'\) is not on the grid .* up to 3\.0 mm .* overlap 82 %"):
        check(_entry(affine, far))
    CheckLabelGridd(("moving_image", "fixed_image"), ("moving_label", "fixed_label"), check_affine=False)(
        _entry(affine, far)
    )
    with pytest.raises(ValueError, match=r"has spatial shape \(12, 10, 9\) but its image"):
        check(_entry(affine, label_shape=(1, 12, 10, 9)))


def test_entry_check_of_label_values_and_channels():
    check = CheckInputsd(("moving_image", "fixed_image"), ("moving_label", "fixed_label"), max_labels=50)
    codes = torch.randint(0, 40, (1, 12, 10, 8)).float()  # integer codes stored as float: fine
    check(_entry(label_values=codes))
    check(_entry(label_values=codes.to(torch.int16)))
    with pytest.raises(ValueError, match=r"seg\.nii\.gz'\) is not a label map: 1 of its 960 voxels"):
        check(_entry(label_values=codes + _one_fraction(codes)))
    with pytest.raises(ValueError, match=r"holds 120 or more distinct values, more than max_labels=50"):
        check(_entry(label_values=torch.arange(960.0).reshape(1, 12, 10, 8) // 8))
    with pytest.raises(ValueError, match=r"moving_label \('seg\.nii\.gz'\) has 2 channels .* a label map has one"):
        check(_entry(label_values=torch.zeros(2, 12, 10, 8)))
    nan_label = codes.clone()
    nan_label[0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"moving_label \('seg\.nii\.gz'\) has 1 NaN or infinite voxel values"):
        check(_entry(label_values=nan_label))
    with pytest.raises(ValueError, match=r"moving_image \('img\.nii\.gz'\) has 2 channels .* in_channels=2"):
        check(_entry(shape=(2, 12, 10, 8), label_shape=(1, 12, 10, 8)))
    CheckInputsd(spatial_dims=None, channels=None)(_entry(shape=(2, 12, 10), label_shape=(1, 12, 10)))


def _one_fraction(codes):
    """Zeros like ``codes`` except one voxel at 0.5."""
    out = torch.zeros_like(codes)
    out[0, 2, 3, 4] = 0.5
    return out


def test_pair_preprocessing_checks_labels_before_resampling(pair, tmp_path):
    image, label = _volume(3)
    far = AFFINE.copy()
    far[:3, 3] += 1000.0
    pair["moving_label"] = _write(tmp_path / "far_seg.nii.gz", label, far)
    with pytest.raises(Exception) as info:
        pair_preprocessing(spacing=2.0, resample_to_fixed=True)(pair)
    message = _messages(info.value)
    assert "far_seg.nii.gz" in message and "is not on the grid of its image moving_image" in message
