# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monai.data.utils import affine_to_spacing
from monai.transforms import LoadImaged
from monai_sacb.data import learn2reg_datalist, learn2reg_sections

PAIR = ("moving_image", "fixed_image", "moving_label", "fixed_label")


def img(task: Path, i: int) -> str:
    return str(task / "imagesTr" / f"Tiny_{i:04d}_0000.nii.gz")


def lab(task: Path, i: int) -> str:
    return str(task / "labelsTr" / f"Tiny_{i:04d}_0000.nii.gz")


def rewrite(task: Path, edit) -> None:
    content = json.loads((task / "Tiny_dataset.json").read_text())
    edit(content)
    (task / "Tiny_dataset.json").write_text(json.dumps(content))


def test_training_all_pairs_without_validation_images(tmp_path, write_learn2reg, pair_set):
    task = write_learn2reg(tmp_path)  # training 1..4, registration_val uses 4, 5, 6
    pairs = learn2reg_datalist(task, section="training")
    cases = (1, 2, 3)
    expected = {(img(task, m), img(task, f), lab(task, m), lab(task, f)) for m in cases for f in cases if m != f}
    assert pair_set(pairs, with_labels=True) == expected
    assert len(pairs) == 6
    assert all(Path(v).is_absolute() for p in pairs for v in p.values())
    # keeping validation images in the pool: 4 subjects, 12 ordered pairs
    assert len(learn2reg_datalist(task, section="training", exclude_validation=False)) == 12


def test_explicit_training_pairs(tmp_path, write_learn2reg):
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


def test_paired_requires_the_key(tmp_path, write_learn2reg):
    task = write_learn2reg(tmp_path)
    rewrite(task, lambda content: content.pop("training_paired_images"))
    with pytest.raises(ValueError, match="training_paired_images"):
        learn2reg_datalist(task, pairing="paired")
    assert len(learn2reg_datalist(task)) == 6  # auto falls back to the training list


def test_atlas_from_the_task_folder(tmp_path, write_learn2reg, pair_set):
    task = write_learn2reg(tmp_path)
    pairs = learn2reg_datalist(task, pairing="atlas", atlas="imagesTr/Tiny_0001_0000.nii.gz")
    expected = {(img(task, 1), img(task, f), lab(task, 1), lab(task, f)) for f in (2, 3)}
    assert pair_set(pairs, with_labels=True) == expected


def test_validation_labels_from_training_list_and_convention(tmp_path, write_learn2reg, pair_set):
    task = write_learn2reg(tmp_path)
    pairs = learn2reg_datalist(task, section="validation")
    # case 4 has its label from "training"; cases 5 and 6 from the imagesTr -> labelsTr convention
    assert pair_set(pairs, with_labels=True) == {
        (img(task, 6), img(task, 5), lab(task, 6), lab(task, 5)),
        (img(task, 5), img(task, 4), lab(task, 5), lab(task, 4)),
    }
    assert learn2reg_datalist(task, section="val") == pairs


def test_labels_left_out_when_some_are_missing(tmp_path, write_learn2reg):
    task = write_learn2reg(tmp_path)
    Path(lab(task, 6)).unlink()
    with pytest.warns(UserWarning, match="no label maps"):
        pairs = learn2reg_datalist(task, section="validation")
    assert all(set(p) == {"moving_image", "fixed_image"} for p in pairs)
    assert len(pairs) == 2


def test_geometry_preserved(tmp_path, write_learn2reg, geometry):
    task = write_learn2reg(tmp_path)
    pair = learn2reg_datalist(task, section="validation")[0]
    loaded = LoadImaged(keys=list(PAIR), ensure_channel_first=True)(pair)
    for key in PAIR:
        assert tuple(loaded[key].shape[1:]) == geometry.shape
        np.testing.assert_allclose(loaded[key].affine.numpy(), geometry.affine, atol=1e-6)
        spacing = np.linalg.norm(geometry.affine[:3, :3], axis=0)  # [1.5, 2.0, ~3.0017]
        np.testing.assert_allclose(affine_to_spacing(loaded[key].affine, r=3).numpy(), spacing, atol=1e-6)


def test_errors(tmp_path, write_learn2reg):
    with pytest.raises(FileNotFoundError, match="_dataset.json"):
        learn2reg_datalist(tmp_path)
    task = write_learn2reg(tmp_path)
    (task / "Other_dataset.json").write_text("{}")
    with pytest.raises(ValueError, match="Several '\\*_dataset.json'"):
        learn2reg_datalist(task)
    (task / "Other_dataset.json").unlink()
    rewrite(task, lambda content: content.pop("registration_val"))
    with pytest.raises(ValueError, match="registration_val"):
        learn2reg_datalist(task, section="validation")
    rewrite(task, lambda content: content.pop("training"))
    with pytest.raises(ValueError, match="'training'"):
        learn2reg_datalist(task, section="training")
    missing = task / "imagesTr" / "Tiny_0003_0000.nii.gz"
    missing.unlink()
    pair = {"fixed": "./imagesTr/Tiny_0003_0000.nii.gz", "moving": "./imagesTr/Tiny_0001_0000.nii.gz"}
    rewrite(task, lambda content: content.update(registration_val=[pair]))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        learn2reg_datalist(task, section="validation")
    rewrite(task, lambda content: content.update(registration_val=[{"fixed": "./imagesTr/Tiny_0001_0000.nii.gz"}]))
    with pytest.raises(ValueError, match="Entry 0 of 'registration_val' .* needs 'fixed' and 'moving'"):
        learn2reg_datalist(task, section="validation")
    (task / "Tiny_dataset.json").write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        learn2reg_datalist(task)


def test_json_syntax_errors_name_the_file_line_and_column(tmp_path):
    task = tmp_path / "task"
    task.mkdir()
    (task / "Tiny_dataset.json").write_text('{"training": [],}')
    expected = r"Learn2Reg dataset JSON .*Tiny_dataset\.json is not valid JSON: .* line 1, column 17"
    with pytest.raises(ValueError, match=expected):
        learn2reg_datalist(task)
    (task / "Tiny_dataset.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"Tiny_dataset\.json is not a UTF-8 text file"):
        learn2reg_datalist(task)


def test_sections_are_the_keys_of_the_json(tmp_path, write_learn2reg):
    task = write_learn2reg(tmp_path)
    assert learn2reg_sections(task) == ("training", "validation")
    rewrite(task, lambda content: content.update(registration_test=[]))
    assert learn2reg_sections(task / "Tiny_dataset.json") == ("training", "validation", "test")
    rewrite(task, lambda content: [content.pop(k) for k in ("training", "registration_val")])
    assert learn2reg_sections(task) == ("training", "test")  # training_paired_images is a training list too
