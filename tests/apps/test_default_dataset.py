# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_sacb.apps import (
    COARSE_AAL_REGIONS,
    default_cache_dir,
    default_datalist,
    default_pair_kwargs,
    prepare_default_dataset,
)
from monai_sacb.transforms import RandSyntheticPaird

pytestmark = pytest.mark.usefixtures("atlas_packages")

PAIR_KEYS = ("moving_image", "fixed_image", "moving_label", "fixed_label")
NUM_PAIRS = 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, offline):
    cache = tmp_path_factory.mktemp("cache")
    with offline():
        info = prepare_default_dataset(cache_dir=cache, num_validation_pairs=NUM_PAIRS)
    return cache, info


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    values = [v for v in np.union1d(np.unique(a), np.unique(b)) if v > 0]
    return float(np.mean([2.0 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in values]))


def test_template_geometry_and_values(prepared):
    cache, info = prepared
    assert Path(info["dataset_dir"]).is_relative_to(cache)
    image, label = nib.load(info["image"]), nib.load(info["label"])
    assert image.shape == label.shape == (80, 96, 80) == tuple(info["spatial_size"])
    assert all(s % 16 == 0 for s in image.shape)
    for img in (image, label):
        np.testing.assert_allclose(img.affine, np.asarray(info["affine"]))
        np.testing.assert_allclose(np.diag(img.affine)[:3], [2.0, 2.0, 2.0])
        np.testing.assert_allclose(img.header.get_zooms(), [2.0, 2.0, 2.0])
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    # the grid is centred near the MNI origin region (the brain's bounding box centre)
    centre = np.asarray(info["affine"]) @ np.r_[(np.asarray(image.shape) - 1) / 2.0, 1.0]
    assert np.all(np.abs(centre[:3]) < 20.0)

    data = np.asarray(image.dataobj)
    labels = np.asarray(label.dataobj)
    assert data.dtype == np.float32 and labels.dtype == np.uint8
    assert data.min() == 0.0 and data.max() == pytest.approx(1.0)
    brain = data > 0
    assert 0.15 < brain.mean() < 0.45
    assert np.all(brain[labels > 0])  # skull-stripped: every label lies inside the brain
    present = np.unique(labels[labels > 0])
    assert info["num_labels"] == len(present) == len(COARSE_AAL_REGIONS) == 29
    assert sorted(int(k) for k in info["label_names"]) == present.tolist()
    # every coarse region is large enough for a meaningful Dice at 2 mm
    assert np.bincount(labels.ravel())[1:].min() > 500
    assert info["label_names"]["1"] == "Frontal_Dorsal_L" and info["label_names"]["29"] == "Vermis"


def test_second_call_is_fast_and_rewrites_nothing(prepared):
    cache, info = prepared
    files = [info["image"], info["label"]] + [f for pair in info["validation"] for f in pair.values()]
    mtimes = [os.stat(f).st_mtime_ns for f in files]
    start = time.perf_counter()
    again = prepare_default_dataset(cache_dir=cache, num_validation_pairs=NUM_PAIRS)
    assert time.perf_counter() - start < 1.0
    assert again == info
    assert [os.stat(f).st_mtime_ns for f in files] == mtimes
    # no temporary files are left behind
    leftovers = [p for p in Path(info["dataset_dir"]).rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_validation_pairs_are_deterministic_and_recovered(prepared):
    cache, info = prepared
    pair = info["validation"][1]
    before = {k: np.asarray(nib.load(pair[k]).dataobj) for k in PAIR_KEYS}
    # as after an interrupted preparation or a cleaned cache: one file of one pair is missing
    os.remove(pair["fixed_image"])
    redone = prepare_default_dataset(cache_dir=cache, num_validation_pairs=NUM_PAIRS)
    assert redone["validation"] == info["validation"]
    for key in PAIR_KEYS:
        np.testing.assert_array_equal(np.asarray(nib.load(pair[key]).dataobj), before[key])


def test_validation_pairs_need_registration(prepared):
    _, info = prepared
    assert len(info["validation"]) == NUM_PAIRS
    for pair in info["validation"]:
        assert set(pair) == set(PAIR_KEYS)
        moving = np.asarray(nib.load(pair["moving_label"]).dataobj)
        fixed = np.asarray(nib.load(pair["fixed_label"]).dataobj)
        assert moving.dtype == np.uint8 and moving.shape == (80, 96, 80)
        assert 0.4 < _dice(moving, fixed) < 0.9  # identity Dice: clearly below 1, so that learning shows
        image = np.asarray(nib.load(pair["moving_image"]).dataobj)
        assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0


def test_datalists(prepared):
    cache, info = prepared
    train = default_datalist("training", cache_dir=cache, num_samples=5, num_validation_pairs=NUM_PAIRS)
    assert train == [{"image": info["image"], "label": info["label"]}] * 5
    val = default_datalist("validation", cache_dir=cache, num_validation_pairs=NUM_PAIRS)
    assert val == info["validation"]
    assert default_datalist("val", cache_dir=cache, num_validation_pairs=NUM_PAIRS) == val
    with pytest.raises(ValueError, match="section must be 'training' or 'validation', got 'testing'"):
        default_datalist("testing", cache_dir=cache, num_validation_pairs=NUM_PAIRS)


def test_monai_loading(prepared):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    _, info = prepared
    load = Compose([LoadImaged(keys=list(PAIR_KEYS), image_only=True), EnsureChannelFirstd(keys=list(PAIR_KEYS))])
    sample = load(info["validation"][0])
    for key in PAIR_KEYS:
        assert tuple(sample[key].shape) == (1, 80, 96, 80)
        np.testing.assert_allclose(sample[key].pixdim, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(
        sample["moving_label"][0].numpy(), np.asarray(nib.load(info["validation"][0]["moving_label"]).dataobj)
    )


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MONAI_SACB_CACHE", str(tmp_path / "somewhere"))
    assert default_cache_dir() == tmp_path / "somewhere"
    monkeypatch.delenv("MONAI_SACB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "monai_sacb"


def test_manifest_is_valid_json(prepared):
    _, info = prepared
    manifests = list(Path(info["dataset_dir"]).glob("manifest_*.json"))
    assert len(manifests) == 1
    assert json.loads(manifests[0].read_text())["num_labels"] == 29


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        prepare_default_dataset(cache_dir=tmp_path, label_set="nonsense", num_validation_pairs=0)


def test_pair_kwargs_keep_the_deformation_in_mm():
    assert default_pair_kwargs(2.0) == {}
    for spacing, factor in ((4.0, 0.5), (1.0, 2.0)):
        pair = RandSyntheticPaird(**default_pair_kwargs(spacing))
        assert pair.max_displacement == (4.0 * factor, 7.0 * factor)
        assert pair.control_spacing == 16 * factor
