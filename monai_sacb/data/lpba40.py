# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Datalists of LPBA40: subject-to-subject pairs of a folder of images and label maps, split into sections by
subfolder or by subject number.
"""

from __future__ import annotations

import re
from pathlib import Path

from monai.config import PathLike

from monai_sacb.data.pairing import make_pairs
from monai_sacb.data.utils import (
    SECTIONS,
    existing_dir,
    existing_file,
    image_stem,
    is_label_name,
    label_free_stem,
    list_images,
    natural_key,
    normalize_section,
    section_folder,
)

__all__ = ["lpba40_datalist", "lpba40_sections"]


def _subject_id(path: Path) -> str:
    """The number after an ``S`` (``S01`` -> ``1``), else the first number of the name, else the name itself."""
    name = image_stem(path)
    match = re.search(r"(?:^|[^a-z0-9])s(\d+)", name, flags=re.IGNORECASE) or re.search(r"(\d+)", name)
    if match:
        return str(int(match.group(1)))
    return label_free_stem(name)


def _is_label_file(path: Path, folder: Path) -> bool:
    in_label_folder = any(part.lower().startswith(("label", "seg")) for part in path.relative_to(folder).parts[:-1])
    return in_label_folder or is_label_name(path)


def _subjects_under(folder: Path) -> list[dict]:
    """``{"image", "label"?}`` of every subject found under ``folder`` (recursively), in subject id order."""
    images: dict[str, list[Path]] = {}
    labels: dict[str, list[Path]] = {}
    for path in list_images(folder, recursive=True):
        target = labels if _is_label_file(path, folder) else images
        target.setdefault(_subject_id(path), []).append(path)
    for kind, found in (("images", images), ("label maps", labels)):
        for sid, paths in found.items():
            if len(paths) > 1:
                raise ValueError(f"Subject {sid} has several {kind} under {folder}: {[str(p) for p in paths]}.")
    orphans = sorted(set(labels) - set(images), key=natural_key)
    if orphans:
        raise ValueError(f"Label maps without an image under {folder}: {[str(labels[s][0]) for s in orphans]}.")
    subjects = []
    for sid in sorted(images, key=natural_key):
        subject = {"image": str(images[sid][0])}
        if sid in labels:
            subject["label"] = str(labels[sid][0])
        subjects.append(subject)
    return subjects


def _section_subjects(root: Path, section: str, num_train: int, num_val: int) -> tuple[list[dict], Path]:
    """The subjects of ``section`` and the folder they come from (see :py:func:`lpba40_datalist` for the split)."""
    folder = section_folder(root, section)
    if folder is not None:
        return _subjects_under(folder), folder
    start, stop = {
        "training": (0, num_train),
        "validation": (num_train, num_train + num_val if num_val > 0 else None),
        "test": (num_train + num_val, None),
    }[section]
    return _subjects_under(root)[start:stop], root


def lpba40_datalist(
    root: PathLike,
    section: str = "training",
    pairing: str | None = "all",
    num_train: int = 30,
    num_val: int = 0,
    atlas: PathLike | None = None,
    atlas_label: PathLike | None = None,
    num_pairs: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """
    Subject-to-subject pairs of LPBA40 (by default all ordered pairs within a section).

    Folder convention: images and label maps anywhere under ``root`` (searched recursively), NIfTI/NRRD/MHA.
    A file is a label map when its name has a word ``label``/``labels``/``seg``/``segmentation``
    (``S01.delineation.structure.label.nii.gz``, ``S01_seg.nii.gz``) or it lies in a folder whose name starts
    with ``label``/``seg``; every other file is an image (``S01.delineation.skullstripped.nii.gz``, ``S01.nii.gz``).
    Image and label map are matched by subject id: the number after an ``S`` (``S01``), else the first number
    of the name. Labels keep their LPBA40 codes: remap them with
    :py:class:`monai_sacb.transforms.RemapLabelsd` and ``values="lpba40"``. The Analyze files (``.hdr``/``.img``)
    of the original release are not listed: convert them to NIfTI first.

    Sections: when ``root`` has a ``train``/``val``/``test`` subfolder (also ``training``, ``validation``,
    ``Train``, ...), the section's subfolder is used. Otherwise subjects sorted by id are split: training =
    the first ``num_train``; validation = the next ``num_val``, or with ``num_val=0`` the remaining subjects
    (the common 30/10 protocol, where the held-out subjects serve for validation and test); test = the
    subjects after ``num_train + num_val``.

    ``pairing`` (default ``"all"``), ``num_pairs`` and ``seed`` are as in :py:func:`monai_sacb.data.make_pairs`;
    ``atlas``/``atlas_label`` give the atlas for ``pairing="atlas"``.

    Raises:
        FileNotFoundError: ``root`` is missing.
        ValueError: no subjects in the section, or ambiguous files for a subject.
    """
    root = existing_dir(root, "LPBA40 folder")
    section = normalize_section(section)
    subjects, folder = _section_subjects(root, section, num_train, num_val)
    if not subjects:
        raise ValueError(
            f"No LPBA40 subjects for section {section!r} under {folder} "
            f"(num_train={num_train}, num_val={num_val})."
        )
    atlas_subject = None
    if atlas is not None:
        atlas_subject = {"image": existing_file(atlas, "atlas image")}
        if atlas_label is not None:
            atlas_subject["label"] = existing_file(atlas_label, "atlas label map")
    return make_pairs(subjects, pairing=pairing, atlas=atlas_subject, num_pairs=num_pairs, seed=seed)


def lpba40_sections(root: PathLike, num_train: int = 30, num_val: int = 0) -> tuple[str, ...]:
    """The sections of :py:func:`lpba40_datalist` that hold subjects, with the same split arguments."""
    root = existing_dir(root, "LPBA40 folder")
    return tuple(s for s in SECTIONS if _section_subjects(root, s, num_train, num_val)[0])
