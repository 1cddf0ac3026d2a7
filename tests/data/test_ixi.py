# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai.transforms import LoadImaged
from monai_sacb.data import (
    ALLOW_PICKLE_ENV,
    convert_ixi_pickles,
    ixi_datalist,
    ixi_sections,
    load_ixi_pickle,
    make_datalist,
)

SHAPE = (5, 6, 7)  # the real volumes are 160x192x224


def volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(SHAPE, dtype=np.float32), rng.integers(0, 46, size=SHAPE).astype(np.uint8)


def write_ixi_pickles(root: Path, counts=(("Train", 3), ("Val", 1), ("Test", 2))) -> dict[str, tuple]:
    """A TransMorph-style IXI folder: atlas.pkl and Train/Val/Test/subject_*.pkl, each (image, label)."""
    arrays = {"atlas": volume(100)}
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "atlas.pkl", "wb") as f:
        pickle.dump(arrays["atlas"], f)
    for split, n in counts:
        (root / split).mkdir()
        for i in range(n):
            arrays[f"{split}/subject_{i}"] = volume(10 * len(arrays) + i)
            with open(root / split / f"subject_{i}.pkl", "wb") as f:
                pickle.dump(arrays[f"{split}/subject_{i}"], f)
    return arrays


class _Marker:
    """A pickle that would create a folder when loaded: what the opt-in protects against."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_pickles_need_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    write_ixi_pickles(tmp_path / "src")
    with pytest.raises(PermissionError, match="arbitrary code.*python -m monai_sacb.data.ixi"):
        load_ixi_pickle(tmp_path / "src" / "atlas.pkl")
    with pytest.raises(PermissionError, match="--allow_pickle"):
        convert_ixi_pickles(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()
    image, label = load_ixi_pickle(tmp_path / "src" / "atlas.pkl", allow_pickle=True)
    np.testing.assert_array_equal(image, volume(100)[0])
    np.testing.assert_array_equal(label, volume(100)[1])
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    assert load_ixi_pickle(tmp_path / "src" / "atlas.pkl")[0].dtype == np.float32


def test_only_numpy_arrays_are_unpickled(tmp_path):
    marker = tmp_path / "was_executed"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump((_Marker(str(marker)), np.zeros(SHAPE)), f)
    with pytest.raises(pickle.UnpicklingError, match="os"):
        load_ixi_pickle(tmp_path / "evil.pkl", allow_pickle=True)
    assert not marker.exists()
    with open(tmp_path / "single.pkl", "wb") as f:
        pickle.dump(np.zeros(SHAPE), f)
    with pytest.raises(ValueError, match=r"\(image, label\)"):
        load_ixi_pickle(tmp_path / "single.pkl", allow_pickle=True)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_protocols(tmp_path, protocol):
    with open(tmp_path / "s.pkl", "wb") as f:
        pickle.dump(volume(1), f, protocol=protocol)
    image, label = load_ixi_pickle(tmp_path / "s.pkl", allow_pickle=True)
    np.testing.assert_array_equal(label, volume(1)[1])


def test_convert_and_read_back(tmp_path):
    arrays = write_ixi_pickles(tmp_path / "src")
    dst = tmp_path / "dst"
    summary = convert_ixi_pickles(str(tmp_path / "src"), str(dst), allow_pickle=True)
    assert summary == {"output": str(dst), "Train": 3, "Val": 1, "Test": 2}

    atlas = str(dst / "atlas.nii.gz")
    pairs = ixi_datalist(dst, split="Train")
    assert [(p["moving_image"], p["fixed_image"]) for p in pairs] == [
        (atlas, str(dst / "Train" / f"subject_{i}.nii.gz")) for i in range(3)
    ]
    assert {p["moving_label"] for p in pairs} == {str(dst / "atlas_label.nii.gz")}
    assert pairs[2]["fixed_label"] == str(dst / "Train" / "subject_2_label.nii.gz")
    assert ixi_datalist(dst, split="Val") == ixi_datalist(dst, split="validation") == ixi_datalist(dst, split="val")
    assert len(ixi_datalist(dst, split="Val")) == 1
    assert make_datalist("ixi", dataset_dir=dst, section="test") == ixi_datalist(dst, "Test")
    assert "moving_label" not in ixi_datalist(dst, "Test", labels=False)[0]

    # stored types and geometry: float32 image, int16 label, identity affine (1 mm)
    label_file = nib.load(pairs[1]["fixed_label"])
    assert label_file.get_data_dtype() == np.int16
    assert nib.load(pairs[1]["fixed_image"]).get_data_dtype() == np.float32
    np.testing.assert_array_equal(label_file.affine, np.eye(4))
    assert label_file.header["sform_code"] == 2  # "aligned": the atlas's space, not MNI
    assert not [p for p in dst.rglob(".*")]  # written atomically: no temporary files left

    loaded = LoadImaged(keys=["moving_image", "fixed_image", "moving_label", "fixed_label"])(pairs[1])
    np.testing.assert_array_equal(loaded["moving_image"].numpy(), arrays["atlas"][0])
    np.testing.assert_array_equal(loaded["moving_label"].numpy(), arrays["atlas"][1])
    np.testing.assert_array_equal(loaded["fixed_image"].numpy(), arrays["Train/subject_1"][0])
    np.testing.assert_array_equal(loaded["fixed_label"].numpy(), arrays["Train/subject_1"][1])
    np.testing.assert_allclose(loaded["fixed_image"].affine.numpy(), np.eye(4))


def test_datalist_errors(tmp_path):
    write_ixi_pickles(tmp_path / "src", counts=(("Train", 1),))
    with pytest.raises(FileNotFoundError, match="python -m monai_sacb.data.ixi"):
        ixi_datalist(tmp_path / "src")
    convert_ixi_pickles(str(tmp_path / "src"), str(tmp_path / "dst"), allow_pickle=True)
    with pytest.raises(FileNotFoundError, match="Val"):
        ixi_datalist(tmp_path / "dst", split="Val")
    (tmp_path / "dst" / "Train" / "subject_0_label.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="subject_0_label.nii.gz"):
        ixi_datalist(tmp_path / "dst")


def test_command_line(tmp_path):
    write_ixi_pickles(tmp_path / "src", counts=(("Val", 2),))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop(ALLOW_PICKLE_ENV, None)
    cmd = [sys.executable, "-m", "monai_sacb.data.ixi", str(tmp_path / "src"), str(tmp_path / "dst"), "--allow_pickle"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert len(ixi_datalist(tmp_path / "dst", "Val")) == 2


def test_sections_are_the_split_folders(tmp_path):
    write_ixi_pickles(tmp_path / "src", counts=(("Train", 1), ("Val", 1)))
    convert_ixi_pickles(str(tmp_path / "src"), str(tmp_path / "dst"), allow_pickle=True)
    assert ixi_sections(tmp_path / "dst") == ("training", "validation")
    with pytest.raises(ValueError, match="Unknown section 'holdout'"):
        ixi_datalist(tmp_path / "dst", split="holdout")
