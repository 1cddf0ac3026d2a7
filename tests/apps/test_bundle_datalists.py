# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import json
from pathlib import Path

import pytest

import monai_sacb.apps.bundle_datalists as bundle_datalists
from monai_sacb.apps import (
    BUNDLE_DATA_FORMATS,
    DATA_PIPELINES,
    DEFAULT_SPACING,
    bundle_datalist,
    check_data_format,
    check_pipeline,
    generated_spacing,
    inference_datalist,
)
from monai_sacb.data import DATALIST_FORMATS


def touch_folder(root: Path, n: int = 3, labels: bool = True) -> list[str]:
    """``root/images/case<i>.nii.gz`` (and ``root/labels/``): the datalists only look at names, not contents."""
    for sub in ("images", "labels") if labels else ("images",):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            (root / sub / f"case{i}.nii.gz").touch()
    return [str(root / "images" / f"case{i}.nii.gz") for i in range(n)]


def test_data_formats_and_their_pipelines():
    assert BUNDLE_DATA_FORMATS == ("default", "synth", *DATALIST_FORMATS)
    assert set(DATA_PIPELINES) == set(BUNDLE_DATA_FORMATS)
    assert DATA_PIPELINES["synth"] == "synth" and DATA_PIPELINES["default"] == "default"
    assert {DATA_PIPELINES[f] for f in DATALIST_FORMATS} == {"files"}
    assert check_data_format("LPBA40") == "lpba40"
    with pytest.raises(ValueError, match="unknown data format 'oasis'; valid: default, synth, learn2reg"):
        check_data_format("oasis")


def test_pipeline_that_does_not_fit_names_both_and_the_fix():
    check_pipeline("lpba40", "files")
    check_pipeline("synth", "synth")
    expected = (
        "data format 'lpba40' is read from files, but the config lists the training transforms of the 'synth' "
        "pipeline: add bundle/configs/data_files.json after train.json: --config_file "
        "\"['bundle/configs/train.json','bundle/configs/data_files.json']\" --data_format lpba40 --dataset_dir ..."
    )
    with pytest.raises(ValueError) as error:
        check_pipeline("LPBA40", "synth")
    assert str(error.value) == expected
    with pytest.raises(ValueError, match=r"'default' is the embedded default dataset.*'synth' pipeline: add "
                       r"bundle/configs/data_default.json after train.json: .* --data_format default$"):  # fmt: skip
        check_pipeline("default", "synth")
    with pytest.raises(ValueError, match=r"'synth' is the label-synthesis dataset.*'files' pipeline: drop the extra "
                       r"config file: --config_file bundle/configs/train.json --data_format synth$"):  # fmt: skip
        check_pipeline("synth", "files")
    with pytest.raises(ValueError, match="unknown pipeline 'nifti'; valid: synth, default, files"):
        check_pipeline("folder", "nifti")


def test_pipeline_is_checked_for_training_before_any_data_is_read(tmp_path):
    with pytest.raises(ValueError, match="data_files.json"):
        bundle_datalist("folder", tmp_path / "nowhere", "train", pipeline="synth")
    images = touch_folder(tmp_path / "data")
    # validation and test pairs are read the same way whatever the training transforms
    assert len(bundle_datalist("folder", tmp_path / "data", "validation", pipeline="synth")) == 6
    assert {p["moving_image"] for p in bundle_datalist("folder", tmp_path / "data", pipeline="files")} == set(images)


@pytest.mark.parametrize("spacing, expected", [(None, DEFAULT_SPACING), (0, DEFAULT_SPACING), (0.0, DEFAULT_SPACING),
                                               ([0, 0, 0], DEFAULT_SPACING), ([], DEFAULT_SPACING), (4, 4.0),
                                               ([3.0, 3.0, 3.0], 3.0)])  # fmt: skip
def test_generated_spacing(spacing, expected):
    assert generated_spacing(spacing) == expected


def test_file_formats(tmp_path):
    touch_folder(tmp_path / "data")
    pairs = bundle_datalist("folder", tmp_path / "data", "validation", num_pairs=4, spacing=0)
    assert len(pairs) == 4 and all("moving_label" in p for p in pairs)
    assert bundle_datalist("folder", tmp_path / "data", pairing="atlas", atlas="case0.nii.gz") == pairs[:2]
    with pytest.raises(ValueError, match="does not exist"):
        bundle_datalist("learn2reg", tmp_path / "nothing")
    (tmp_path / "pairs.json").write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(ValueError, match=r"the 'validation' datalist of data format 'json' in .* is empty"):
        bundle_datalist("json", tmp_path / "pairs.json", "val")


def test_required_labels_are_checked_before_training(tmp_path):
    touch_folder(tmp_path / "images_only", n=2, labels=False)
    assert len(bundle_datalist("folder", tmp_path / "images_only", "validation")) == 2
    with pytest.raises(ValueError) as error:
        bundle_datalist("folder", tmp_path / "images_only", "validation", require_labels=True)
    message = str(error.value)
    assert "2 of the 2 validation pairs of data format 'folder' in" in message and "have no label maps" in message
    assert "val_mean_dice" in message and "labels/ folder" in message
    touch_folder(tmp_path / "labelled", n=2)
    assert len(bundle_datalist("folder", tmp_path / "labelled", "validation", require_labels=True)) == 2


def test_synth_arguments(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bundle_datalists, "synth_datalist", lambda *a, **k: calls.append((a, k)) or [{"label": "x"}])
    assert bundle_datalist(dataset_dir=tmp_path, section="test", spacing=[4, 4, 4], num_samples=3) == [{"label": "x"}]
    bundle_datalist(dataset_dir="", section="train", num_pairs=5)
    assert calls == [
        (("test",), {"cache_dir": str(tmp_path), "num_samples": 3, "num_validation_pairs": 16, "spacing": 4.0}),
        (("training",), {"cache_dir": None, "num_samples": 32, "num_validation_pairs": 5, "spacing": 2.0}),
    ]


@pytest.mark.usefixtures("atlas_packages")
def test_default_dataset_at_a_coarse_spacing(tmp_path, offline):
    with offline():
        validation = bundle_datalist("default", tmp_path, "validation", num_pairs=2, spacing=8.0)
    assert len(validation) == 2 and Path(validation[0]["moving_image"]).is_relative_to(tmp_path)
    assert "8mm" in validation[0]["moving_image"]
    assert bundle_datalist("default", tmp_path, "test", num_pairs=2, spacing=[8.0] * 3) == validation
    assert inference_datalist(data_format="default", dataset_dir=tmp_path, num_pairs=2, spacing=8.0) == validation
    training = bundle_datalist("default", tmp_path, num_samples=3, num_pairs=2, spacing=8.0, pipeline="default")
    assert len(training) == 3 and set(training[0]) == {"image", "label"}


def test_inference_of_one_given_pair(tmp_path):
    (tmp_path / "a.nii.gz").touch()
    (tmp_path / "b.nii.gz").touch()
    pair = inference_datalist(str(tmp_path / "a.nii.gz"), str(tmp_path / "sub" / ".." / "b.nii.gz"))
    assert pair == [{"moving_image": str(tmp_path / "a.nii.gz"), "fixed_image": str(tmp_path / "b.nii.gz")}]
    with_label = inference_datalist(str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), str(tmp_path / "a.nii.gz"))
    assert with_label[0]["moving_label"] == str(tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="both --moving_image and --fixed_image"):
        inference_datalist(moving_image="a.nii.gz")
    with pytest.raises(FileNotFoundError, match="--fixed_image: file not found"):
        inference_datalist(str(tmp_path / "a.nii.gz"), str(tmp_path / "c.nii.gz"))


def test_inference_falls_back_to_validation_without_a_test_section(tmp_path):
    val = touch_folder(tmp_path / "data" / "val", n=2)
    touch_folder(tmp_path / "data" / "train")
    pairs = inference_datalist(data_format="folder", dataset_dir=tmp_path / "data")
    assert {p["moving_image"] for p in pairs} == set(val)
    test = touch_folder(tmp_path / "data" / "test", n=2)
    pairs = inference_datalist(data_format="folder", dataset_dir=tmp_path / "data", num_pairs=1)
    assert len(pairs) == 1 and pairs[0]["moving_image"] in test

    entry = {"moving_image": val[0], "fixed_image": val[1]}
    (tmp_path / "pairs.json").write_text(json.dumps({"training": [entry], "validation": [entry, entry]}))
    assert len(inference_datalist(data_format="json", dataset_dir=tmp_path / "pairs.json")) == 2
    # neither test nor validation: the reader says what is missing
    (tmp_path / "train_only.json").write_text(json.dumps({"training": [entry]}))
    with pytest.raises(ValueError, match="has no key 'test'"):
        inference_datalist(data_format="json", dataset_dir=tmp_path / "train_only.json")
    with pytest.raises(ValueError, match="unknown data format 'nifti'"):
        inference_datalist(data_format="nifti", dataset_dir=tmp_path)


def test_describe_data_says_what_the_pairs_are():
    from monai_sacb.apps import describe_data

    line = describe_data("SYNTH", "test", None, 16)
    assert line.startswith("16 pairs of data format 'synth', section 'test', from the default cache: held out")
    assert describe_data("lpba40", "validation", "/data/LPBA40", 3) == (
        "3 pairs of data format 'lpba40', section 'validation', from /data/LPBA40"
    )
    with pytest.raises(ValueError, match="unknown data format"):
        describe_data("nifti", "test", None, 1)
