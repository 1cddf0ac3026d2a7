# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import json
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from monai_sacb.data.utils import (
    SECTIONS,
    atomic_write,
    existing_dir,
    existing_file,
    image_stem,
    is_label_name,
    label_free_stem,
    list_images,
    natural_key,
    normalize_section,
    read_json,
    save_json,
    save_nifti,
    section_folder,
)


@pytest.mark.parametrize(
    "name, expected",
    [("train", "training"), ("TR", "training"), ("Val", "validation"), ("valid", "validation"), ("testing", "test")],
)
def test_section_aliases(name, expected):
    assert normalize_section(name) == expected
    assert normalize_section(expected) == expected


def test_unknown_section_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown section 'holdout'; valid: training, validation, test."):
        normalize_section("holdout")


def test_section_folder_any_alias_any_case(tmp_path):
    (tmp_path / "Train").mkdir()
    (tmp_path / "ts").mkdir()
    (tmp_path / "val").touch()  # a file, not a folder
    assert section_folder(tmp_path, "training") == tmp_path / "Train"
    assert section_folder(tmp_path, "test") == tmp_path / "ts"
    assert section_folder(tmp_path, "validation") is None
    assert [section_folder(tmp_path, s) is not None for s in SECTIONS] == [True, False, True]


def test_file_names():
    assert image_stem("/a/b/case01.nii.gz") == "case01"
    assert image_stem("case01.NII") == "case01"
    assert image_stem("model.pt") == "model"
    assert image_stem("notes.txt") == "notes.txt"
    assert is_label_name("S01.delineation.structure.label.nii.gz") and is_label_name("case01_Seg.mha")
    assert not is_label_name("S01.delineation.skullstripped.nii.gz") and not is_label_name("segment01.nii.gz")
    assert label_free_stem("/x/Case01-seg.nii.gz") == label_free_stem("case01.nii.gz") == "case01"
    assert sorted(["s10", "s2", "s1"], key=natural_key) == ["s1", "s2", "s10"]


def test_list_images(tmp_path):
    for name in ("b10.nii.gz", "b2.mha", "notes.txt", "sub/b1.nrrd"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "folder.nii").mkdir()  # a folder with an image suffix is not an image
    assert [p.name for p in list_images(tmp_path)] == ["b2.mha", "b10.nii.gz"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["b2.mha", "b10.nii.gz", "b1.nrrd"]
    assert [p.name for p in list_images(tmp_path, pattern="*.mha")] == ["b2.mha"]


def test_existing_paths(tmp_path, monkeypatch):
    (tmp_path / "a.nii.gz").touch()
    monkeypatch.chdir(tmp_path)
    assert existing_file("./sub/../a.nii.gz") == str(tmp_path / "a.nii.gz")
    assert existing_dir(".") == tmp_path
    with pytest.raises(FileNotFoundError, match=f"label map not found: {tmp_path / 'b.nii.gz'}"):
        existing_file("b.nii.gz", "label map")
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        existing_dir("a.nii.gz", "images folder")


def test_read_json_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    assert read_json(path, "thing") == {"a": 1}
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"thing .*x\.json is not valid JSON: Expecting value at line 2, column 7"):
        read_json(path, "thing")
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"x\.json is not a UTF-8 text file"):
        read_json(path, "thing")


def test_save_json_round_trip(tmp_path):
    save_json({"a": [1, 2]}, tmp_path / "sub" / "m.json")
    assert read_json(tmp_path / "sub" / "m.json", "manifest") == {"a": [1, 2]}


def test_save_nifti_space_and_atomicity(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    save_nifti(np.ones((2, 3, 4), np.float32), affine, tmp_path / "mni.nii.gz")
    save_nifti(np.ones((2, 3, 4), np.int16), np.eye(4), tmp_path / "sub" / "aligned.nii.gz", space="aligned")
    mni, aligned = nib.load(tmp_path / "mni.nii.gz"), nib.load(tmp_path / "sub" / "aligned.nii.gz")
    np.testing.assert_array_equal(mni.affine, affine)
    assert (int(mni.header["sform_code"]), int(mni.header["qform_code"])) == (4, 4)
    assert (int(aligned.header["sform_code"]), aligned.get_data_dtype()) == (2, np.int16)
    assert mni.header.get_xyzt_units()[0] == "mm"

    def fail(tmp):
        open(tmp, "w").write("partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "mni.nii.gz", fail)
    assert nib.load(tmp_path / "mni.nii.gz").shape == (2, 3, 4)  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mni.nii.gz", "sub"]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_json({"a": 1}, tmp_path / "new.json")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
        mode = stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode)
        assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode) == 0o666 & ~umask
        os.chmod(tmp_path / "new.json", 0o600)  # replacing a file keeps its permissions
        save_json({"a": 2}, tmp_path / "new.json")
        assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o600
        assert json.loads((tmp_path / "new.json").read_text()) == {"a": 2}
    finally:
        os.umask(old)
