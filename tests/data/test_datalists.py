# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monai.data.utils import affine_to_spacing
from monai.transforms import LoadImaged
from monai_sacb.data import folder_datalist, json_datalist, learn2reg_datalist, lpba40_datalist, make_datalist
from tests.data.datalist_helpers import AFFINE, SHAPE, write_learn2reg, write_nifti

PAIR = ("moving_image", "fixed_image", "moving_label", "fixed_label")


def pair_set(pairs, with_labels=False):
    keys = PAIR if with_labels else PAIR[:2]
    return {tuple(p[k] for k in keys) for p in pairs}


def img(task: Path, i: int) -> str:
    return str(task / "imagesTr" / f"Tiny_{i:04d}_0000.nii.gz")


def lab(task: Path, i: int) -> str:
    return str(task / "labelsTr" / f"Tiny_{i:04d}_0000.nii.gz")


# ---------------------------------------------------------------------------------------------------- Learn2Reg


def test_learn2reg_training_all_pairs_without_validation_images(tmp_path):
    task = write_learn2reg(tmp_path)  # training 1..4, registration_val uses 4, 5, 6
    pairs = learn2reg_datalist(task, section="training")
    cases = (1, 2, 3)
    expected = {(img(task, m), img(task, f), lab(task, m), lab(task, f)) for m in cases for f in cases if m != f}
    assert pair_set(pairs, with_labels=True) == expected
    assert len(pairs) == 6
    assert all(Path(v).is_absolute() for p in pairs for v in p.values())
    # keeping validation images in the pool: 4 subjects, 12 ordered pairs
    assert len(learn2reg_datalist(task, section="training", exclude_validation=False)) == 12


def test_learn2reg_explicit_training_pairs(tmp_path):
    task = write_learn2reg(tmp_path, paired=True)
    pairs = learn2reg_datalist(task / "Tiny_dataset.json", section="training")
    assert pairs == [
        {
            "moving_image": img(task, 2),
            "fixed_image": img(task, 1),
            "moving_label": lab(task, 2),
            "fixed_label": lab(task, 1),
        }
    ]
    # an explicit strategy uses "training" instead
    assert len(learn2reg_datalist(task, section="training", pairing="all")) == 6
    assert len(learn2reg_datalist(task, section="training", pairing="random", num_pairs=5, seed=1)) == 5


def test_learn2reg_paired_requires_the_key(tmp_path):
    task = write_learn2reg(tmp_path)
    content = json.loads((task / "Tiny_dataset.json").read_text())
    del content["training_paired_images"]
    (task / "Tiny_dataset.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="training_paired_images"):
        learn2reg_datalist(task, pairing="paired")
    assert len(learn2reg_datalist(task)) == 6  # auto falls back to the training list


def test_learn2reg_validation_labels_from_training_list_and_convention(tmp_path):
    task = write_learn2reg(tmp_path)
    pairs = learn2reg_datalist(task, section="validation")
    # case 4 has its label from "training"; cases 5 and 6 from the imagesTr -> labelsTr convention
    assert pair_set(pairs, with_labels=True) == {
        (img(task, 6), img(task, 5), lab(task, 6), lab(task, 5)),
        (img(task, 5), img(task, 4), lab(task, 5), lab(task, 4)),
    }


def test_learn2reg_labels_left_out_when_some_are_missing(tmp_path):
    task = write_learn2reg(tmp_path)
    Path(lab(task, 6)).unlink()
    with pytest.warns(UserWarning, match="no label maps"):
        pairs = learn2reg_datalist(task, section="validation")
    assert all(set(p) == {"moving_image", "fixed_image"} for p in pairs)
    assert len(pairs) == 2


def test_learn2reg_geometry_preserved(tmp_path):
    task = write_learn2reg(tmp_path)
    pair = learn2reg_datalist(task, section="validation")[0]
    loaded = LoadImaged(keys=list(PAIR), ensure_channel_first=True)(pair)
    for key in PAIR:
        assert tuple(loaded[key].shape[1:]) == SHAPE
        np.testing.assert_allclose(loaded[key].affine.numpy(), AFFINE, atol=1e-6)
        spacing = np.linalg.norm(AFFINE[:3, :3], axis=0)  # [1.5, 2.0, ~3.0017]
        np.testing.assert_allclose(affine_to_spacing(loaded[key].affine, r=3).numpy(), spacing, atol=1e-6)


def test_learn2reg_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="_dataset.json"):
        learn2reg_datalist(tmp_path)
    task = write_learn2reg(tmp_path)
    content = json.loads((task / "Tiny_dataset.json").read_text())
    del content["registration_val"]
    (task / "Tiny_dataset.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="registration_val"):
        learn2reg_datalist(task, section="validation")
    del content["training"]
    (task / "Tiny_dataset.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="'training'"):
        learn2reg_datalist(task, section="training")
    missing = task / "imagesTr" / "Tiny_0003_0000.nii.gz"
    missing.unlink()
    content["registration_val"] = [
        {"fixed": "./imagesTr/Tiny_0003_0000.nii.gz", "moving": "./imagesTr/Tiny_0001_0000.nii.gz"}
    ]
    (task / "Tiny_dataset.json").write_text(json.dumps(content))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        learn2reg_datalist(task, section="validation")


# ---------------------------------------------------------------------------------------------------- folders


def write_folder(root: Path, n: int = 4, label_suffix: str = "_seg") -> tuple[list[str], list[str]]:
    images = [write_nifti(root / "images" / f"case{i:02d}.nii.gz", seed=i) for i in range(n)]
    labels = [write_nifti(root / "labels" / f"case{i:02d}{label_suffix}.nii.gz", seed=i, label=True) for i in range(n)]
    return images, labels


def test_folder_all_pairs_with_labels(tmp_path):
    images, labels = write_folder(tmp_path)
    pairs = folder_datalist(tmp_path / "images", tmp_path / "labels")
    expected = {(images[m], images[f], labels[m], labels[f]) for m in range(4) for f in range(4) if m != f}
    assert len(pairs) == 4 * 3
    assert pair_set(pairs, with_labels=True) == expected


def test_folder_atlas_pairs(tmp_path):
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


def test_folder_label_matching_and_missing_label(tmp_path):
    images, _ = write_folder(tmp_path, n=2, label_suffix="")
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


def test_folder_mha_geometry(tmp_path):
    """MetaImage files are found and read through ITK with their spacing."""
    folder = tmp_path / "mha"
    folder.mkdir()
    for i in range(2):
        data = np.random.default_rng(i).random(SHAPE[::-1], dtype=np.float32)  # MetaImage stores x fastest
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
    assert tuple(loaded["moving_image"].shape[1:]) == SHAPE
    spacing = affine_to_spacing(loaded["moving_image"].affine, r=3).numpy()
    np.testing.assert_allclose(spacing, [1.5, 2.0, 3.0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------- JSON


def test_json_datalist_relative_paths(tmp_path):
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
    with pytest.raises(ValueError, match="'testing'"):
        json_datalist(tmp_path / "pairs.json", key="testing")
    (tmp_path / "bad.json").write_text(json.dumps({"training": [{"moving_image": "data/images/case00.nii.gz"}]}))
    with pytest.raises(ValueError, match="fixed_image"):
        json_datalist(tmp_path / "bad.json")
    entry = {"moving_image": "data/images/case00.nii.gz", "fixed_image": "data/images/nope.nii.gz"}
    (tmp_path / "missing.json").write_text(json.dumps({"training": [entry]}))
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        json_datalist(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------------- LPBA40


def write_lpba40(root: Path, ids, lpba_names: bool = True) -> dict[int, tuple[str, str]]:
    out = {}
    for i in ids:
        if lpba_names:
            image = write_nifti(root / f"S{i:02d}" / f"S{i:02d}.delineation.skullstripped.nii.gz", seed=i)
            label = write_nifti(root / f"S{i:02d}" / f"S{i:02d}.delineation.structure.label.nii.gz", seed=i, label=True)
        else:
            image = write_nifti(root / "images" / f"subject_{i}.nii.gz", seed=i)
            label = write_nifti(root / "labels" / f"subject_{i}.nii.gz", seed=i, label=True)
        out[i] = (image, label)
    return out


def test_lpba40_flat_split(tmp_path):
    files = write_lpba40(tmp_path, ids=[1, 2, 3, 4, 5, 10])
    train = lpba40_datalist(tmp_path, section="training", num_train=3)
    expected = {(files[m][0], files[f][0], files[m][1], files[f][1]) for m in (1, 2, 3) for f in (1, 2, 3) if m != f}
    assert pair_set(train, with_labels=True) == expected
    val = lpba40_datalist(tmp_path, section="validation", num_train=3)
    assert len(val) == 3 * 2  # subjects 4, 5, 10 (sorted by number, not by text)
    assert {p["fixed_image"] for p in val} == {files[i][0] for i in (4, 5, 10)}
    assert len(lpba40_datalist(tmp_path, section="validation", num_train=3, num_val=2)) == 2
    with pytest.raises(ValueError, match="no pairs from 1 subject"):
        lpba40_datalist(tmp_path, section="test", num_train=3, num_val=2)  # only S10 is left
    with pytest.raises(ValueError, match="No LPBA40 subjects"):
        lpba40_datalist(tmp_path, section="validation", num_train=6)


def test_lpba40_split_folders_and_generic_names(tmp_path):
    train = write_lpba40(tmp_path / "train", ids=[1, 2, 3], lpba_names=False)
    test = write_lpba40(tmp_path / "Test", ids=[4, 5], lpba_names=False)
    pairs = lpba40_datalist(tmp_path, section="training")
    assert len(pairs) == 6 and {p["moving_image"] for p in pairs} == {v[0] for v in train.values()}
    assert all(Path(p["moving_label"]).parent.name == "labels" for p in pairs)
    pairs = lpba40_datalist(tmp_path, section="test")
    assert pair_set(pairs, with_labels=True) == {
        (test[4][0], test[5][0], test[4][1], test[5][1]),
        (test[5][0], test[4][0], test[5][1], test[4][1]),
    }


# ---------------------------------------------------------------------------------------------------- make_datalist


def test_make_datalist_dispatch(tmp_path):
    task = write_learn2reg(tmp_path / "l2r")
    pairs = make_datalist("learn2reg", dataset_dir=str(task), section="validation")
    assert pairs == learn2reg_datalist(task, "validation")
    images, labels = write_folder(tmp_path / "folder" / "train")
    write_folder(tmp_path / "folder" / "val", n=2)
    train = make_datalist(format="folder", dataset_dir=tmp_path / "folder", section="training")
    assert len(train) == 12 and {p["moving_label"] for p in train} == set(labels)
    assert len(make_datalist(format="folder", dataset_dir=tmp_path / "folder", section="validation")) == 2
    entries = [{"moving_image": images[0], "fixed_image": images[1]}]
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "datalist.json").write_text(json.dumps({"training": entries, "validation": entries * 2}))
    assert len(make_datalist("json", dataset_dir=tmp_path / "json", section="validation")) == 2
    assert make_datalist("json", dataset_dir=tmp_path / "json" / "datalist.json", section="train") == entries
    write_lpba40(tmp_path / "lpba", ids=[1, 2, 3])
    assert len(make_datalist("lpba40", dataset_dir=tmp_path / "lpba", num_train=2)) == 2


def test_make_datalist_errors(tmp_path):
    with pytest.raises(ValueError, match="learn2reg, folder, json, ixi, lpba40"):
        make_datalist(format="dicom", dataset_dir=tmp_path)
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"dataset_dir '{missing}' does not exist; pass --dataset_dir"):
        make_datalist(format="folder", dataset_dir=str(missing))
    with pytest.raises(ValueError, match="--dataset_dir"):
        make_datalist(format="folder", dataset_dir=None)
    with pytest.raises(ValueError, match="section"):
        make_datalist(format="folder", dataset_dir=tmp_path, section="holdout")


def test_lpba40_atlas_pairs(tmp_path):
    files = write_lpba40(tmp_path / "lpba", ids=[1, 2, 3])
    atlas = write_nifti(tmp_path / "atlas" / "template.nii.gz", seed=50)
    atlas_label = write_nifti(tmp_path / "atlas" / "template_label.nii.gz", seed=50, label=True)
    pairs = lpba40_datalist(tmp_path / "lpba", pairing="atlas", atlas=atlas, atlas_label=atlas_label)
    assert pair_set(pairs, with_labels=True) == {(atlas, f[0], atlas_label, f[1]) for f in files.values()}


def test_bundle_config_expressions(tmp_path):
    """The calls a bundle config makes: make_datalist in an expression, RandomPairDataset as a _target_."""
    from monai.bundle import ConfigParser

    images, _ = write_folder(tmp_path / "data")
    parser = ConfigParser(
        {
            # "$import monai_sacb.data" alone binds no usable name: the package name comes from "$import monai_sacb"
            "imports": ["$import monai_sacb", "$import monai_sacb.data"],
            "dataset_dir": str(tmp_path / "data"),
            "datalist": "$monai_sacb.data.make_datalist(format='folder', dataset_dir=@dataset_dir, section='training')",
            "subjects": "$monai_sacb.data.make_datalist(format='folder', dataset_dir=@dataset_dir, pairing=None)",
            "dataset": {
                "_target_": "monai_sacb.data.RandomPairDataset",
                "data": "@subjects",
                "num_pairs": 3,
                "seed": 0,
            },
        }
    )
    assert len(parser.get_parsed_content("datalist")) == 12
    dataset = parser.get_parsed_content("dataset")
    assert len(dataset) == 3 and {s["image"] for s in dataset.subjects} == set(images)


def test_json_syntax_errors_name_the_file_line_and_column(tmp_path):
    datalist = tmp_path / "pairs.json"
    datalist.write_text('{"training": [\n  {"moving_image": "a.nii.gz" "fixed_image": "b.nii.gz"}\n]}\n')
    expected = r"JSON datalist .*pairs\.json is not valid JSON: Expecting ',' delimiter at line 2, column 31"
    with pytest.raises(ValueError, match=expected):
        json_datalist(datalist)
    task = tmp_path / "task"
    task.mkdir()
    (task / "Tiny_dataset.json").write_text('{"training": [],}')
    expected = r"Learn2Reg dataset JSON .*Tiny_dataset\.json is not valid JSON: .* line 1, column 17"
    with pytest.raises(ValueError, match=expected):
        learn2reg_datalist(task)
    (task / "Tiny_dataset.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"Tiny_dataset\.json is not a UTF-8 text file"):
        learn2reg_datalist(task)
