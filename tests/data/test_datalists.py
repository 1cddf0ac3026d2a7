# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import json

import pytest

from monai_sacb.data import (
    DATALIST_FORMATS,
    SECTIONS,
    datalist_sections,
    folder_datalist,
    learn2reg_datalist,
    lpba40_datalist,
    make_datalist,
)


def test_make_datalist_dispatch(tmp_path, write_learn2reg, write_folder, write_lpba40):
    task = write_learn2reg(tmp_path / "l2r")
    pairs = make_datalist("learn2reg", dataset_dir=str(task), section="validation")
    assert pairs == learn2reg_datalist(task, "validation")
    images, labels = write_folder(tmp_path / "folder" / "train")
    write_folder(tmp_path / "folder" / "val", n=2)
    train = make_datalist(format="folder", dataset_dir=tmp_path / "folder", section="training")
    assert len(train) == 12 and {p["moving_label"] for p in train} == set(labels)
    assert len(make_datalist(format="folder", dataset_dir=tmp_path / "folder", section="validation")) == 2
    explicit = make_datalist("folder", dataset_dir=tmp_path, images_dir=tmp_path / "folder" / "val" / "images")
    assert explicit == folder_datalist(tmp_path / "folder" / "val" / "images")
    entries = [{"moving_image": images[0], "fixed_image": images[1]}]
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "datalist.json").write_text(json.dumps({"training": entries, "validation": entries * 2}))
    assert len(make_datalist("json", dataset_dir=tmp_path / "json", section="validation")) == 2
    assert make_datalist("json", dataset_dir=tmp_path / "json" / "datalist.json", section="train") == entries
    write_lpba40(tmp_path / "lpba", ids=[1, 2, 3])
    assert len(make_datalist("LPBA40", dataset_dir=tmp_path / "lpba", num_train=2)) == 2
    assert make_datalist("lpba40", dataset_dir=tmp_path / "lpba", section="test", num_train=1) == lpba40_datalist(
        tmp_path / "lpba", "test", num_train=1
    )


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


def test_datalist_sections_dispatch(tmp_path, write_learn2reg, write_folder, write_lpba40):
    assert datalist_sections("learn2reg", write_learn2reg(tmp_path / "l2r")) == ("training", "validation")
    write_folder(tmp_path / "folder" / "train")
    write_folder(tmp_path / "folder" / "test", n=2)
    assert datalist_sections("folder", tmp_path / "folder") == ("training", "test")
    assert datalist_sections("folder", tmp_path / "folder", pattern="*.mha") == ()
    assert datalist_sections("folder", tmp_path, images_dir=tmp_path / "folder" / "train" / "images") == SECTIONS
    (tmp_path / "pairs.json").write_text(json.dumps({"validation": []}))
    assert datalist_sections("json", tmp_path / "pairs.json") == ("validation",)
    assert datalist_sections("json", tmp_path / "pairs.json", key="validation") == SECTIONS
    write_lpba40(tmp_path / "lpba", ids=[1, 2, 3])
    lpba40 = datalist_sections("lpba40", tmp_path / "lpba", num_train=2, num_val=1, pairing="atlas")
    assert lpba40 == ("training", "validation")
    for fmt in DATALIST_FORMATS:
        with pytest.raises(ValueError, match="does not exist"):
            datalist_sections(fmt, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="Unknown datalist format 'dicom'"):
        datalist_sections("dicom", tmp_path)


def test_bundle_config_expressions(tmp_path, write_folder):
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
