# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Tiny volumes on disk for the datalist tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (6, 5, 4)
# anisotropic spacing, an off-diagonal term and a translation: geometry that a reader could get wrong
AFFINE = np.array(
    [[1.5, 0.0, 0.1, -10.0], [0.0, 2.0, 0.0, 5.0], [0.0, 0.0, 3.0, 2.5], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)


def write_nifti(path: Path, seed: int = 0, label: bool = False, affine: np.ndarray = AFFINE) -> str:
    """Write a small random image (float32) or label map (int16) and return its path as a string."""
    rng = np.random.default_rng(seed)
    if label:
        data = rng.integers(0, 4, size=SHAPE).astype(np.int16)
    else:
        data = rng.random(SHAPE, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def write_learn2reg(root: Path, n: int = 4, paired: bool = False, validation=((4, 5),)) -> Path:
    """A Learn2Reg-style task: imagesTr/labelsTr for n + 2 cases, the last two only reachable via registration_val."""
    task = root / "Tiny"
    for i in range(1, n + 3):
        write_nifti(task / "imagesTr" / f"Tiny_{i:04d}_0000.nii.gz", seed=i)
        write_nifti(task / "labelsTr" / f"Tiny_{i:04d}_0000.nii.gz", seed=i, label=True)
    content = {
        "name": "Tiny",
        "tensorImageShape": {"0": list(SHAPE)},
        "labels": {"0": {"0": "background", "1": "a", "2": "b", "3": "c"}},
        # cases 1..n are listed with labels; the validation cases n+1, n+2 are not in "training"
        "training": [
            {"image": f"./imagesTr/Tiny_{i:04d}_0000.nii.gz", "label": f"./labelsTr/Tiny_{i:04d}_0000.nii.gz"}
            for i in range(1, n + 1)
        ],
        "training_paired_images": (
            [{"fixed": "./imagesTr/Tiny_0001_0000.nii.gz", "moving": "./imagesTr/Tiny_0002_0000.nii.gz"}]
            if paired
            else []
        ),
        "registration_val": [
            {"fixed": f"./imagesTr/Tiny_{f:04d}_0000.nii.gz", "moving": f"./imagesTr/Tiny_{m:04d}_0000.nii.gz"}
            for f, m in ((n + 1, n + 2),)
        ]
        + [
            {"fixed": f"./imagesTr/Tiny_{f:04d}_0000.nii.gz", "moving": f"./imagesTr/Tiny_{m:04d}_0000.nii.gz"}
            for f, m in validation
        ],
    }
    (task / "Tiny_dataset.json").write_text(json.dumps(content, indent=1))
    return task
