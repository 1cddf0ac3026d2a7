# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Fixtures of the datalist tests: tiny volumes on disk in the layouts the readers know. Each writer is a fixture
returning the function, so that a test can ask for the layout and size it needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

SHAPE = (6, 5, 4)
# anisotropic spacing, an off-diagonal term and a translation: geometry that a reader could get wrong
AFFINE = np.array(
    [[1.5, 0.0, 0.1, -10.0], [0.0, 2.0, 0.0, 5.0], [0.0, 0.0, 3.0, 2.5], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)
PAIR_KEYS = ("moving_image", "fixed_image", "moving_label", "fixed_label")


def _write_nifti(path: Path, seed: int = 0, label: bool = False) -> str:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4, size=SHAPE).astype(np.int16) if label else rng.random(SHAPE, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return str(path)


@pytest.fixture
def geometry():
    """``.shape`` and ``.affine`` of every volume the writers make."""
    return SimpleNamespace(shape=SHAPE, affine=AFFINE)


@pytest.fixture
def write_nifti():
    """``write_nifti(path, seed=0, label=False) -> str``: a random float32 image or int16 label map (0..3)."""
    return _write_nifti


@pytest.fixture
def pair_set():
    """``pair_set(pairs, with_labels=False)``: the pairs as a set of path tuples (moving, fixed[, labels])."""

    def as_set(pairs, with_labels=False):
        keys = PAIR_KEYS if with_labels else PAIR_KEYS[:2]
        return {tuple(p[k] for k in keys) for p in pairs}

    return as_set


@pytest.fixture
def write_learn2reg():
    """
    ``write_learn2reg(root, n=4, paired=False, validation=((4, 5),)) -> task folder``: a Learn2Reg-style task
    ``root/Tiny`` with imagesTr/labelsTr for n + 2 cases; cases 1..n are listed in ``training`` with labels, the
    last two only in ``registration_val`` (with the ``validation`` pairs as ``(fixed, moving)`` case numbers).
    """

    def write(root: Path, n: int = 4, paired: bool = False, validation=((4, 5),)) -> Path:
        task = root / "Tiny"
        for i in range(1, n + 3):
            _write_nifti(task / "imagesTr" / f"Tiny_{i:04d}_0000.nii.gz", seed=i)
            _write_nifti(task / "labelsTr" / f"Tiny_{i:04d}_0000.nii.gz", seed=i, label=True)
        image = "./imagesTr/Tiny_{:04d}_0000.nii.gz".format
        content = {
            "name": "Tiny",
            "tensorImageShape": {"0": list(SHAPE)},
            "labels": {"0": {"0": "background", "1": "a", "2": "b", "3": "c"}},
            "training": [
                {"image": image(i), "label": f"./labelsTr/Tiny_{i:04d}_0000.nii.gz"} for i in range(1, n + 1)
            ],
            "training_paired_images": [{"fixed": image(1), "moving": image(2)}] if paired else [],
            "registration_val": [
                {"fixed": image(f), "moving": image(m)} for f, m in ((n + 1, n + 2), *validation)
            ],
        }
        (task / "Tiny_dataset.json").write_text(json.dumps(content, indent=1))
        return task

    return write


@pytest.fixture
def write_folder():
    """
    ``write_folder(root, n=4, label_suffix="_seg") -> (images, labels)``: ``root/images/caseNN.nii.gz`` and
    ``root/labels/caseNN<label_suffix>.nii.gz``, NN = 00..n-1; the paths as strings.
    """

    def write(root: Path, n: int = 4, label_suffix: str = "_seg") -> tuple[list[str], list[str]]:
        images = [_write_nifti(root / "images" / f"case{i:02d}.nii.gz", seed=i) for i in range(n)]
        labels = [
            _write_nifti(root / "labels" / f"case{i:02d}{label_suffix}.nii.gz", seed=i, label=True) for i in range(n)
        ]
        return images, labels

    return write


@pytest.fixture
def write_lpba40():
    """
    ``write_lpba40(root, ids, lpba_names=True) -> {id: (image, label)}``: subjects named as in the LPBA40 release
    (``S01/S01.delineation.skullstripped.nii.gz`` and ``...structure.label.nii.gz``) or, with
    ``lpba_names=False``, ``images/subject_<id>.nii.gz`` and ``labels/subject_<id>.nii.gz``.
    """

    def write(root: Path, ids, lpba_names: bool = True) -> dict[int, tuple[str, str]]:
        out = {}
        for i in ids:
            if lpba_names:
                folder = root / f"S{i:02d}"
                image = _write_nifti(folder / f"S{i:02d}.delineation.skullstripped.nii.gz", seed=i)
                label = _write_nifti(folder / f"S{i:02d}.delineation.structure.label.nii.gz", seed=i, label=True)
            else:
                image = _write_nifti(root / "images" / f"subject_{i}.nii.gz", seed=i)
                label = _write_nifti(root / "labels" / f"subject_{i}.nii.gz", seed=i, label=True)
            out[i] = (image, label)
        return out

    return write
