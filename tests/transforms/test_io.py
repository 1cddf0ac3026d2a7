# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch

from monai.data import MetaTensor

from monai_sacb.transforms import PairNamed, pair_name_formatter


def test_pair_named_names_every_output_after_moving_and_fixed_stems():
    data = {
        "moving_image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/data/sub-01_T1w.nii.gz"}),
        "fixed_image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/atlas/mni.nii"}),
        "warped_image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/atlas/mni.nii"}),
        "ddf": MetaTensor(torch.zeros(2, 2, 2)),
        "plain": torch.zeros(1),
    }
    out = PairNamed(keys=["warped_image", "ddf", "plain", "warped_label"])(data)
    assert out["warped_image"].meta["filename_or_obj"] == "sub-01_T1w_to_mni"
    assert out["ddf"].meta["filename_or_obj"] == "sub-01_T1w_to_mni"
    assert out["moving_image"].meta["filename_or_obj"] == "/data/sub-01_T1w.nii.gz"  # inputs untouched


def test_pair_named_uses_key_names_without_file_names():
    data = {"moving_image": torch.zeros(1), "fixed_image": torch.zeros(1), "ddf": MetaTensor(torch.zeros(1))}
    assert PairNamed(keys="ddf")(data)["ddf"].meta["filename_or_obj"] == "moving_image_to_fixed_image"


def test_pair_name_formatter_keeps_the_whole_pair_name():
    assert pair_name_formatter({"filename_or_obj": "a_to_b"}, None) == {"subject": "a_to_b", "idx": None}
    assert pair_name_formatter({"filename_or_obj": "/x/a_to_b.nii.gz", "patch_index": 3}, None)["subject"] == "a_to_b"
    assert pair_name_formatter(None, None)["subject"] == "pair"
