# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import json

import numpy as np
import pytest

from monai.data.utils import affine_to_spacing
from monai.transforms import LoadImaged
from monai_sacb.data import folder_datalist, folder_sections, json_datalist, json_sections
from monai_sacb.data.folder import find_json_datalist, folder_layout

# ---------------------------------------------------------------------------------------------------- folders


def test_all_pairs_with_labels(tmp_path, write_folder, pair_set):
    images, labels = write_folder(tmp_path)
    pairs = folder_datalist(tmp_path / "images", tmp_path / "labels")
    expected = {(images[m], images[f], labels[m], labels[f]) for m in range(4) for f in range(4) if m != f}
    assert len(pairs) == 4 * 3
    assert pair_set(pairs, with_labels=True) == expected


def test_atlas_pairs(tmp_path, write_folder, write_nifti, pair_set):
    images, labels = write_folder(tmp_path)
    atlas = write_nifti(tmp_path / "atlas" / "atlas.nii.gz", seed=99)
    atlas_label = write_nifti(tmp_path / "atlas" / "atlas_seg.nii.gz", seed=99, label=True)
    pairs = folder_datalist(
        tmp_path / "images", tmp_path / "labels", pairing="atlas", atlas=atlas, atlas_label=atlas_label
    )
    assert pair_set(pairs, with_labels=True) == {(atlas, images[i], atlas_label, labels[i]) for i in range(4)}
    # an atlas picked from the folder is not paired with itself; its label is looked up like the others
    pairs = folder_datalist(tmp_path / "images", tmp_path / "labels", pairing="atlas", atlas="case00.nii.gz")
    assert pair_set(pairs, with_labels=True) == {(images[0], images[i], labels[0], labels[i]) for i in (1, 2, 3)}
    with pytest.raises(ValueError, match="atlas"):
        folder_datalist(tmp_path / "images", pairing="atlas")


def test_atlas_without_a_label_map_gives_pairs_without_labels(tmp_path, write_folder, write_nifti):
    write_folder(tmp_path, n=2)
    atlas = write_nifti(tmp_path / "atlas.nii.gz", seed=9)
    with pytest.warns(UserWarning, match="No label map for the atlas"):
        pairs = folder_datalist(tmp_path / "images", tmp_path / "labels", pairing="atlas", atlas=atlas)
    assert [set(p) for p in pairs] == [{"moving_image", "fixed_image"}] * 2


def test_label_matching_and_missing_label(tmp_path, write_folder, write_nifti):
    write_folder(tmp_path, n=2, label_suffix="")
    nn_unet = write_nifti(tmp_path / "images" / "other_0000.nii.gz", seed=5)
    nn_label = write_nifti(tmp_path / "labels" / "other.nii.gz", seed=5, label=True)
    pairs = folder_datalist(tmp_path / "images", tmp_path / "labels", pairing="atlas", atlas=nn_unet)
    assert {(p["moving_label"], p["fixed_label"]) for p in pairs} == {
        (nn_label, str(tmp_path / "labels" / f"case{i:02d}.nii.gz")) for i in range(2)
    }
    lonely = write_nifti(tmp_path / "images" / "lonely.nii.gz", seed=7)
    with pytest.raises(FileNotFoundError, match=lonely):
        folder_datalist(tmp_path / "images", tmp_path / "labels")
    # no labels folder: images only, every file of the folder
    assert len(folder_datalist(tmp_path / "images")) == 4 * 3
    assert len(folder_datalist(tmp_path / "images", pattern="case*")) == 2


def test_images_and_labels_in_one_folder(tmp_path, write_nifti, pair_set):
    images = [write_nifti(tmp_path / f"case{i}.nii.gz", seed=i) for i in range(2)]
    labels = [write_nifti(tmp_path / f"case{i}_seg.nii.gz", seed=i, label=True) for i in range(2)]
    pairs = folder_datalist(tmp_path, labels_dir=tmp_path)
    assert pair_set(pairs, with_labels=True) == {
        (images[0], images[1], labels[0], labels[1]),
        (images[1], images[0], labels[1], labels[0]),
    }
    write_nifti(tmp_path / "case0-label.nii.gz", seed=0, label=True)
    with pytest.raises(ValueError, match="Several label maps match"):
        folder_datalist(tmp_path, labels_dir=tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        folder_datalist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="No images matching"):
        folder_datalist(tmp_path)


def test_mha_geometry(tmp_path, pair_set, geometry):
    """MetaImage files are found and read through ITK with their spacing."""
    folder = tmp_path / "mha"
    folder.mkdir()
    for i in range(2):
        data = np.random.default_rng(i).random(geometry.shape[::-1], dtype=np.float32)  # MetaImage: x fastest
        (folder / f"vol{i}.raw").write_bytes(data.tobytes())
        (folder / f"vol{i}.mhd").write_text(
            "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            "Offset = 1 2 3\nElementSpacing = 1.5 2.0 3.0\nDimSize = 6 5 4\nElementType = MET_FLOAT\n"
            f"ElementDataFile = vol{i}.raw\n"
        )
    pairs = folder_datalist(folder)
    vol0, vol1 = str(folder / "vol0.mhd"), str(folder / "vol1.mhd")
    assert pair_set(pairs) == {(vol0, vol1), (vol1, vol0)}
    loaded = LoadImaged(keys=["moving_image", "fixed_image"], ensure_channel_first=True)(pairs[0])
    assert tuple(loaded["moving_image"].shape[1:]) == geometry.shape
    spacing = affine_to_spacing(loaded["moving_image"].affine, r=3).numpy()
    np.testing.assert_allclose(spacing, [1.5, 2.0, 3.0], atol=1e-6)


def test_layout_and_sections_of_a_dataset_folder(tmp_path, write_folder):
    write_folder(tmp_path / "Train", n=2)
    (tmp_path / "val" / "imagesTr").mkdir(parents=True)
    assert folder_layout(tmp_path, "training") == (tmp_path / "Train" / "images", tmp_path / "Train" / "labels")
    assert folder_layout(tmp_path, "validation") == (tmp_path / "val" / "imagesTr", None)
    assert folder_layout(tmp_path, "test") == (tmp_path, None)  # no test folder: the dataset folder itself
    assert folder_sections(tmp_path) == ("training",)  # val/imagesTr is empty, the dataset folder has no images
    assert folder_sections(tmp_path / "Train" / "images") == ("training", "validation", "test")
    assert folder_sections(tmp_path / "Train" / "images", pattern="*.nrrd") == ()


# ---------------------------------------------------------------------------------------------------- JSON


def test_json_datalist_relative_paths(tmp_path, write_folder, pair_set):
    images, labels = write_folder(tmp_path / "data", n=3)
    entries = [
        {"moving_image": "data/images/case00.nii.gz", "fixed_image": "data/images/case01.nii.gz",
         "moving_label": "data/labels/case00_seg.nii.gz", "fixed_label": "data/labels/case01_seg.nii.gz", "id": 7},
        {"moving_image": images[2], "fixed_image": "./data/images/case00.nii.gz",
         "moving_label": labels[2], "fixed_label": "data/labels/case00_seg.nii.gz"},
    ]  # fmt: skip
    (tmp_path / "pairs.json").write_text(json.dumps({"training": entries, "validation": entries[:1]}))
    pairs = json_datalist(tmp_path / "pairs.json")
    assert pair_set(pairs, with_labels=True) == {
        (images[0], images[1], labels[0], labels[1]),
        (images[2], images[0], labels[2], labels[0]),
    }
    assert pairs[0]["id"] == 7
    assert len(json_datalist(tmp_path / "pairs.json", key="validation")) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bare.json").write_text(json.dumps(entries[:1]))
    assert json_datalist(tmp_path / "other" / "bare.json", base_dir=tmp_path) == pairs[:1]


def test_json_datalist_errors(tmp_path, write_folder):
    write_folder(tmp_path / "data", n=2)
    entry = {"moving_image": "data/images/case00.nii.gz", "fixed_image": "data/images/case01.nii.gz"}
    (tmp_path / "pairs.json").write_text(json.dumps({"training": [entry]}))
    with pytest.raises(ValueError, match="'testing'"):
        json_datalist(tmp_path / "pairs.json", key="testing")
    (tmp_path / "bad.json").write_text(json.dumps({"training": [{"moving_image": "data/images/case00.nii.gz"}]}))
    with pytest.raises(ValueError, match="fixed_image"):
        json_datalist(tmp_path / "bad.json")
    one_label = {**entry, "moving_label": entry["moving_image"]}
    (tmp_path / "one_label.json").write_text(json.dumps({"training": [one_label]}))
    with pytest.raises(ValueError, match="only one of 'moving_label'/'fixed_label'"):
        json_datalist(tmp_path / "one_label.json")
    (tmp_path / "missing.json").write_text(json.dumps({"training": [{**entry, "fixed_image": "data/nope.nii.gz"}]}))
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        json_datalist(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="JSON datalist not found"):
        json_datalist(tmp_path / "absent.json")


def test_json_syntax_errors_name_the_file_line_and_column(tmp_path):
    datalist = tmp_path / "pairs.json"
    datalist.write_text('{"training": [\n  {"moving_image": "a.nii.gz" "fixed_image": "b.nii.gz"}\n]}\n')
    expected = r"JSON datalist .*pairs\.json is not valid JSON: Expecting ',' delimiter at line 2, column 31"
    with pytest.raises(ValueError, match=expected):
        json_datalist(datalist)


def test_find_json_datalist_and_its_sections(tmp_path):
    (tmp_path / "pairs.json").write_text(json.dumps({"training": [], "test": []}))
    assert find_json_datalist(tmp_path) == tmp_path / "pairs.json"
    assert find_json_datalist(tmp_path / "pairs.json") == tmp_path / "pairs.json"
    assert json_sections(tmp_path / "pairs.json") == ("training", "test")
    (tmp_path / "other.json").write_text("[]")
    assert json_sections(tmp_path / "other.json") == ("training", "validation", "test")  # a bare list serves all
    with pytest.raises(ValueError, match=r"Expected datalist.json or a single \*.json .*'other.json', 'pairs.json'"):
        find_json_datalist(tmp_path)
    (tmp_path / "datalist.json").write_text("{}")
    assert find_json_datalist(tmp_path) == tmp_path / "datalist.json"
