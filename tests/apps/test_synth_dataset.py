# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from monai_sacb.apps import TRAINING_ATLASES, VALIDATION_ATLAS, prepare_synth_dataset, synth_datalist

pytestmark = pytest.mark.usefixtures("atlas_packages")

ATLASES = ("aal", "neuromorphometrics")
SPACING = 4.0  # 48x48x48 voxels: quick to prepare


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, offline):
    cache = tmp_path_factory.mktemp("cache")
    with offline():
        info = prepare_synth_dataset(cache, spacing=SPACING, training_atlases=ATLASES, num_validation_pairs=2)
    return cache, info


def _load(path):
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def test_training_label_maps_cover_the_brain(prepared):
    _, info = prepared
    assert [item["label"].split("labels_")[1] for item in info["training"]] == [f"{a}.nii.gz" for a in ATLASES]
    t1, affine = _load(info["training"][0]["image"])
    brain = t1 > 0
    assert t1.shape == tuple(info["spatial_size"]) and all(s % 16 == 0 for s in t1.shape)
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), SPACING)
    for item in info["training"]:
        label, label_affine = _load(item["label"])
        np.testing.assert_allclose(label_affine, affine)
        assert label.dtype == np.uint16
        # every brain voxel has a label (atlas region or one of three tissue classes), nothing outside the brain
        assert np.all(label[brain] > 0) and np.all(label[~brain] == 0)
        values = np.unique(label[brain])
        assert np.array_equal(values, np.arange(1, values.max() + 1))  # renumbered 1..L
        assert values.max() > 50  # the parcellation's regions are there


def test_validation_pairs_use_the_held_out_parcellation(prepared):
    _, info = prepared
    assert info["validation_atlas"] == VALIDATION_ATLAS and VALIDATION_ATLAS not in TRAINING_ATLASES
    names = info["validation_label_names"]
    assert 60 < len(names) < 110
    assert not any("White-Matter" in n or "Ventricle" in n for n in names.values())
    assert len(info["validation"]) == 2
    for pair in info["validation"]:
        moving, _ = _load(pair["moving_image"])
        fixed, _ = _load(pair["fixed_image"])
        moving_label, _ = _load(pair["moving_label"])
        fixed_label, _ = _load(pair["fixed_label"])
        assert moving.shape == fixed.shape == moving_label.shape == tuple(info["spatial_size"])
        assert 0.0 <= moving.min() and moving.max() <= 1.0
        assert set(np.unique(moving_label)) - {0} <= {int(k) for k in names}
        assert not np.array_equal(moving_label, fixed_label)  # both sides deformed independently
        # the labels sit on their image: labelled voxels are brain voxels
        assert np.mean(moving[moving_label > 0] > 0.05) > 0.98


def test_second_call_reads_the_manifest(prepared, monkeypatch):
    cache, info = prepared
    import monai_sacb.apps.synth_dataset as module

    monkeypatch.setattr(module, "brain_template", lambda *a, **k: pytest.fail("prepared twice"))
    again = prepare_synth_dataset(cache, spacing=SPACING, training_atlases=ATLASES, num_validation_pairs=2)
    assert json.dumps(again, sort_keys=True) == json.dumps(info, sort_keys=True)


def test_datalists(prepared):
    cache, _ = prepared
    kwargs = {"cache_dir": cache, "spacing": SPACING, "training_atlases": ATLASES, "num_validation_pairs": 2}
    training = synth_datalist("training", num_samples=5, **kwargs)
    assert len(training) == 5 and training[0] == training[2] != training[1]
    assert set(training[0]) == {"label", "image"}
    assert synth_datalist("validation", **kwargs) == synth_datalist("test", **kwargs) == synth_datalist("ts", **kwargs)
    with pytest.raises(ValueError, match="section"):
        synth_datalist("bad", **kwargs)


def test_held_out_atlases_cannot_be_trained_on(tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        prepare_synth_dataset(tmp_path, training_atlases=("aal", "desikan_killiany"))
    with pytest.raises(ValueError, match="held-out"):
        prepare_synth_dataset(tmp_path, training_atlases=("nonexistent",))
