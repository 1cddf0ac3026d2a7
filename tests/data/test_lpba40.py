# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from pathlib import Path

import pytest

from monai_sacb.data import lpba40_datalist, lpba40_sections


def test_flat_split(tmp_path, write_lpba40, pair_set):
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


def test_split_folders_and_generic_names(tmp_path, write_lpba40, pair_set):
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


def test_atlas_pairs(tmp_path, write_lpba40, write_nifti, pair_set):
    files = write_lpba40(tmp_path / "lpba", ids=[1, 2, 3])
    atlas = write_nifti(tmp_path / "atlas" / "template.nii.gz", seed=50)
    atlas_label = write_nifti(tmp_path / "atlas" / "template_label.nii.gz", seed=50, label=True)
    pairs = lpba40_datalist(tmp_path / "lpba", pairing="atlas", atlas=atlas, atlas_label=atlas_label)
    assert pair_set(pairs, with_labels=True) == {(atlas, f[0], atlas_label, f[1]) for f in files.values()}


def test_ambiguous_files_are_refused(tmp_path, write_lpba40, write_nifti):
    write_lpba40(tmp_path, ids=[1, 2])
    write_nifti(tmp_path / "extra" / "S01_seg.nii.gz", label=True)
    with pytest.raises(ValueError, match="Subject 1 has several label maps"):
        lpba40_datalist(tmp_path)
    (tmp_path / "extra" / "S01_seg.nii.gz").unlink()
    write_nifti(tmp_path / "labels" / "S07.nii.gz", label=True)  # a label folder, no image of subject 7
    with pytest.raises(ValueError, match="Label maps without an image"):
        lpba40_datalist(tmp_path)


def test_sections_follow_the_split(tmp_path, write_lpba40):
    write_lpba40(tmp_path / "flat", ids=range(1, 6))
    assert lpba40_sections(tmp_path / "flat", num_train=3) == ("training", "validation", "test")
    assert lpba40_sections(tmp_path / "flat", num_train=3, num_val=2) == ("training", "validation")
    assert lpba40_sections(tmp_path / "flat") == ("training",)  # 30 training subjects asked, 5 found
    write_lpba40(tmp_path / "split" / "train", ids=[1, 2])
    write_lpba40(tmp_path / "split" / "val", ids=[3, 4])
    (tmp_path / "split" / "test").mkdir()
    assert lpba40_sections(tmp_path / "split") == ("training", "validation")
    with pytest.raises(FileNotFoundError, match="LPBA40 folder not found"):
        lpba40_sections(tmp_path / "nowhere")
