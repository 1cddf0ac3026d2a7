# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import math
import os

import pytest

from monai_sacb.utils import check_flags, check_numbers, check_output_dirs


def test_booleans_pass():
    assert check_flags(amp=False, resume=True) is None
    assert check_flags() is None


@pytest.mark.parametrize("value", ["false", "False", "true", 0, 1, None])
def test_anything_else_is_refused_with_its_name_value_and_the_fix(value):
    with pytest.raises(ValueError) as info:
        check_flags(amp=False, deterministic=value)
    message = str(info.value)
    assert f"--deterministic {value!r} ({type(value).__name__})" in message
    assert "--amp" not in message.split(":")[0]  # only the wrong one is named
    assert "this option takes True or False" in message and "capital letter" in message


def test_every_wrong_option_is_named_at_once():
    with pytest.raises(ValueError, match=r"--amp 'false' \(str\), --resume 'no' \(str\): these options take"):
        check_flags(amp="false", progress_bar=True, resume="no")


def test_numbers_in_range_pass():
    assert check_numbers(learning_rate=2e-4, reg_weight=0, label_weight=1) is None
    assert check_numbers(integer=True, minimum=1, max_epochs=1, num_samples=40) is None
    assert check_numbers(integer=True, allow_none=True, num_val_pairs=None) is None


@pytest.mark.parametrize(
    "kwargs, value, expected",
    [
        ({}, "1e-4x", "a number >= 0"),
        ({}, -0.5, "a number >= 0"),
        ({}, math.nan, "a number >= 0"),
        ({}, math.inf, "a number >= 0"),
        ({}, None, "a number >= 0."),
        ({}, True, "a number >= 0"),
        ({"integer": True}, 1.5, "a whole number >= 0"),
        ({"integer": True}, "3", "a whole number >= 0"),
        ({"integer": True, "minimum": 1}, 0, "a whole number >= 1"),
        ({"integer": True, "minimum": 1}, -1, "a whole number >= 1"),
        ({"integer": True, "allow_none": True}, -1, "a whole number >= 0 or None"),
    ],
)
def test_numbers_out_of_range_or_of_another_type_are_refused(kwargs, value, expected):
    with pytest.raises(ValueError) as info:
        check_numbers(**kwargs, ok=2, option=value)
    message = str(info.value)
    assert message == f"--option {value!r} ({type(value).__name__}): this option takes {expected}" + (
        "" if expected.endswith(".") else "."
    )


def test_writable_and_not_yet_existing_folders_pass_and_nothing_is_created(tmp_path):
    check_output_dirs(here=str(tmp_path), new=str(tmp_path / "a" / "b"), path_like=tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["", None, 3])
def test_a_value_that_is_not_a_path_is_refused(value):
    with pytest.raises(ValueError) as info:
        check_output_dirs(output_dir=value)
    assert str(info.value) == (
        f"--output_dir {value!r} (not a folder path): give a folder this process can create or write to."
    )


def test_folders_below_a_file_are_refused_together(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    with pytest.raises(ValueError) as info:
        check_output_dirs(ok=str(tmp_path), ckpt_dir=str(blocker / "x"), output_dir=str(blocker / "y" / "z"))
    assert str(info.value) == (
        f"--ckpt_dir '{blocker / 'x'}' ({blocker} is a file, not a folder); "
        f"--output_dir '{blocker / 'y' / 'z'}' ({blocker} is a file, not a folder): "
        "give a folder this process can create or write to."
    )


def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this process may write anywhere (root)")
        with pytest.raises(ValueError, match=f"--output_dir '.*' \\({locked} is not writable\\)"):
            check_output_dirs(output_dir=str(locked / "out"))
    finally:
        locked.chmod(0o700)
