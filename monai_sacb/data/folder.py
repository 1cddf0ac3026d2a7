# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Datalists of plain folders of images (with optional label maps) and of MONAI-style JSON datalists of pairs.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from monai.config import PathLike

from monai_sacb.data.pairing import PAIR_KEYS, harmonize_labels, make_pairs
from monai_sacb.data.utils import (
    IMAGE_SUFFIXES,
    SECTIONS,
    existing_dir,
    existing_file,
    image_stem,
    is_label_name,
    label_free_stem,
    list_images,
    read_json,
    section_folder,
)

__all__ = [
    "find_json_datalist",
    "folder_datalist",
    "folder_layout",
    "folder_sections",
    "json_datalist",
    "json_sections",
]

_IMAGE_FOLDERS = ("images", "imagestr", "image", "img")
_LABEL_FOLDERS = ("labels", "labelstr", "label", "seg", "segmentations")


def _match_label(image: Path, labels: Sequence[Path]) -> Path | None:
    """The label map of ``image`` among ``labels``: same file name, else same name up to label words."""
    for label in labels:
        if label.name == image.name:
            return label
    # nnU-Net style: image "case_0000" (channel suffix) pairs with label "case"
    keys = {label_free_stem(image), re.sub(r"_0000$", "", image_stem(image)).lower()}
    matches = [label for label in labels if label_free_stem(label) in keys]
    if len(matches) > 1:
        raise ValueError(f"Several label maps match {image}: {[str(m) for m in matches]}.")
    return matches[0] if matches else None


def _folder_subject(image: Path, labels: Sequence[Path] | None, labels_dir: Path | None) -> dict:
    """``{"image", "label"?}``: the label is looked up when there is a labels folder, and must then exist."""
    subject = {"image": existing_file(image, "image")}
    if labels is not None:
        match = _match_label(image, labels)
        if match is None:
            raise FileNotFoundError(f"No label map for image {image} in {labels_dir}.")
        subject["label"] = str(match)
    return subject


def _atlas_subject(
    atlas: PathLike,
    atlas_label: PathLike | None,
    images_dir: Path,
    labels: Sequence[Path] | None,
    labels_dir: Path | None,
) -> dict:
    """The atlas as a subject: ``atlas`` is a path or a name inside ``images_dir``; labels as for the images."""
    atlas_path = Path(os.path.expanduser(os.fspath(atlas)))
    if not atlas_path.is_absolute() and not atlas_path.exists():
        atlas_path = images_dir / atlas_path
    atlas_path = Path(existing_file(atlas_path, "atlas image"))
    if atlas_label is not None:
        return {"image": str(atlas_path), "label": existing_file(atlas_label, "label map")}
    if labels is not None and _match_label(atlas_path, labels) is None:
        warnings.warn(f"No label map for the atlas {atlas_path} in {labels_dir}: the pairs have no labels.")
        return {"image": str(atlas_path)}
    return _folder_subject(atlas_path, labels, labels_dir)


def folder_datalist(
    images_dir: PathLike,
    labels_dir: PathLike | None = None,
    pairing: str | None = "all",
    atlas: PathLike | None = None,
    atlas_label: PathLike | None = None,
    pattern: str = "*",
    num_pairs: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """
    Pairs of the images in a folder (NIfTI, NRRD, MetaImage: see ``IMAGE_SUFFIXES``), with optional label maps.

    A label map in ``labels_dir`` belongs to the image with the same file name, or failing that the same name
    once words like ``label``/``seg`` are dropped (``case01_seg.nii.gz`` -> ``case01.nii.gz``) or the channel
    suffix ``_0000`` of the image is (``case01_0000.nii.gz`` -> ``case01.nii.gz``).

    Args:
        images_dir: folder of images (not searched recursively).
        labels_dir: folder of label maps; when given, every image must have one.
        pairing: ``"atlas"``, ``"all"``, ``"random"`` or ``None`` (see :py:mod:`monai_sacb.data.pairing`).
        atlas: atlas image for ``pairing="atlas"``: a path, or a file name inside ``images_dir``; an atlas
            inside ``images_dir`` is not paired with itself.
        atlas_label: the atlas's label map; by default looked up in ``labels_dir`` like the other images.
        pattern: glob pattern selecting files in ``images_dir`` (and ``labels_dir``).
        num_pairs: number of pairs for ``pairing="random"``.
        seed: random seed for ``pairing="random"``.

    Raises:
        FileNotFoundError: a folder, the atlas, or the label map of an image is missing (the message names it).
        ValueError: no images in the folder.
    """
    images_dir = existing_dir(images_dir, "images folder")
    images = list_images(images_dir, pattern)
    if not images:
        raise ValueError(f"No images matching {pattern!r} with suffix {IMAGE_SUFFIXES} in {images_dir}.")
    labels = None
    if labels_dir is not None:
        labels_dir = existing_dir(labels_dir, "labels folder")
        labels = list_images(labels_dir, pattern)
        if labels_dir == images_dir:
            labels = [p for p in labels if is_label_name(p)]
            images = [p for p in images if not is_label_name(p)]
    atlas_subject = None
    if atlas is not None:
        atlas_subject = _atlas_subject(atlas, atlas_label, images_dir, labels, labels_dir)
    subjects = [_folder_subject(p, labels, labels_dir) for p in images]
    return make_pairs(subjects, pairing=pairing, atlas=atlas_subject, num_pairs=num_pairs, seed=seed)


def folder_layout(dataset_dir: Path, section: str) -> tuple[Path, Path | None]:
    """
    ``(images_dir, labels_dir)`` of ``section`` in a dataset folder: the section's subfolder (``train``/``training``,
    ``val``/``validation``, ``test``, any case) when it exists, else the folder itself; inside it, ``images/``
    (or ``imagesTr/``) and ``labels/`` (or ``labelsTr/``) when present, else its own files as images, no labels.
    """
    base = section_folder(dataset_dir, section) or dataset_dir

    def child(names: Sequence[str]) -> Path | None:
        return next((c for c in sorted(base.iterdir()) if c.is_dir() and c.name.lower() in names), None)

    return child(_IMAGE_FOLDERS) or base, child(_LABEL_FOLDERS)


def folder_sections(dataset_dir: PathLike, pattern: str = "*") -> tuple[str, ...]:
    """The sections of a dataset folder that have images matching ``pattern`` (see :py:func:`folder_layout`)."""
    root = existing_dir(dataset_dir, "dataset folder")
    return tuple(s for s in SECTIONS if list_images(folder_layout(root, s)[0], pattern))


def json_datalist(path: PathLike, key: str = "training", base_dir: PathLike | None = None) -> list[dict]:
    """
    Pairs from a MONAI-style JSON datalist, like :py:func:`monai.data.load_decathlon_datalist` for pairs::

        {"training":   [{"moving_image": "img/a.nii.gz", "fixed_image": "img/b.nii.gz",
                         "moving_label": "seg/a.nii.gz", "fixed_label": "seg/b.nii.gz"}, ...],
         "validation": [...]}

    Relative paths of the four pair keys are resolved against ``base_dir`` (default: the JSON's folder);
    other keys of an entry are passed through unchanged. A JSON holding a bare list is read as the entries.

    Raises:
        FileNotFoundError: the JSON, or a file it names, is missing (the message names it).
        ValueError: the file is not valid JSON (the message gives the line and column), ``key`` is not in the
            JSON, or an entry lacks ``moving_image``/``fixed_image``, or has one
            label key without the other.
    """
    json_path = Path(existing_file(path, "JSON datalist"))
    content = read_json(json_path, "JSON datalist")
    if isinstance(content, dict):
        if key not in content:
            raise ValueError(f"JSON datalist {json_path} has no key {key!r} (keys found: {sorted(content)}).")
        entries = content[key]
    else:
        entries = content
    if not isinstance(entries, list):
        raise ValueError(f"{key!r} of {json_path} must be a list of pair dicts.")
    base = Path(base_dir).absolute() if base_dir is not None else json_path.parent
    pairs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"Entry {i} of {key!r} in {json_path} must be a dict, got {entry!r}.")
        for required in ("moving_image", "fixed_image"):
            if required not in entry:
                raise ValueError(f"Entry {i} of {key!r} in {json_path} has no {required!r} key.")
        if ("moving_label" in entry) != ("fixed_label" in entry):
            raise ValueError(f"Entry {i} of {key!r} in {json_path} has only one of 'moving_label'/'fixed_label'.")
        pair = dict(entry)
        for k in PAIR_KEYS:
            if k in pair:
                pair[k] = existing_file(base / os.path.expanduser(pair[k]), f"{k} of entry {i} in {json_path.name}")
        pairs.append(pair)
    return harmonize_labels(pairs)


def find_json_datalist(dataset_dir: Path) -> Path:
    """``dataset_dir`` when it is a file; else the ``datalist.json`` or the single ``*.json`` in that folder."""
    if not dataset_dir.is_dir():
        return dataset_dir
    candidates = [dataset_dir / "datalist.json"] if (dataset_dir / "datalist.json").is_file() else []
    candidates = candidates or sorted(dataset_dir.glob("*.json"))
    if len(candidates) != 1:
        raise ValueError(
            f"Expected datalist.json or a single *.json in {dataset_dir}, found "
            f"{[c.name for c in candidates]}; pass --dataset_dir /path/to/datalist.json."
        )
    return candidates[0]


def json_sections(path: PathLike) -> tuple[str, ...]:
    """The sections a JSON datalist has as keys; every section for a bare list (read whatever the key)."""
    json_path = existing_file(path, "JSON datalist")
    content = read_json(json_path, "JSON datalist")
    return tuple(s for s in SECTIONS if not isinstance(content, dict) or s in content)
