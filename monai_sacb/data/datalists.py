# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Datalists of registration pairs for the data users bring.

Every function returns a list of pair dicts ``{"moving_image", "fixed_image", "moving_label"?, "fixed_label"?}``
holding absolute path strings of files that exist (or, with ``pairing=None``, the unpaired subjects
``{"image", "label"?}``). Label keys are on every pair or on none, so that items batch together.
Images are read later by MONAI's readers, so orientation and spacing come from the file headers.

:py:func:`make_datalist` is the single entry point for bundle configs.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from monai.config import PathLike

from monai_sacb.data.pairing import PAIR_KEYS, _harmonize_labels, make_pair, make_pairs

__all__ = [
    "IMAGE_SUFFIXES",
    "DATALIST_FORMATS",
    "learn2reg_datalist",
    "folder_datalist",
    "json_datalist",
    "lpba40_datalist",
    "make_datalist",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DATALIST_FORMATS = ("learn2reg", "folder", "json", "ixi", "lpba40")

_SECTION_ALIASES = {
    "training": ("training", "train", "tr"),
    "validation": ("validation", "val", "valid"),
    "test": ("test", "testing", "ts"),
}
_LABEL_WORDS = ("label", "labels", "seg", "segmentation")


def _normalize_section(section: str) -> str:
    name = str(section).lower()
    for canonical, aliases in _SECTION_ALIASES.items():
        if name in aliases:
            return canonical
    raise ValueError(f"Unknown section {section!r}; valid: {', '.join(_SECTION_ALIASES)}.")


def _existing_file(path: PathLike, what: str = "file") -> str:
    """Absolute, normalised path string of an existing file; a FileNotFoundError naming it otherwise."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _read_json(path: PathLike, what: str) -> object:
    """The content of a JSON file; a ``ValueError`` naming the file, the line and the column when it is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{what} {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}. Fix the "
            "syntax there (a missing comma or quote, a trailing comma, a comment: JSON allows none of these)."
        ) from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not a UTF-8 text file ({error}); is it the right file?") from error


def _existing_dir(path: PathLike, what: str = "folder") -> Path:
    path = Path(os.path.expanduser(os.fspath(path))).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _stem(path: PathLike) -> str:
    """File name without its image suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _words(stem: str) -> list[str]:
    return [w for w in re.split(r"[._\-\s]+", stem.lower()) if w]


def _is_label_name(path: PathLike) -> bool:
    return any(w in _LABEL_WORDS for w in _words(_stem(path)))


def _without_label_words(stem: str) -> str:
    return "_".join(w for w in _words(stem) if w not in _LABEL_WORDS)


def _natural_key(path: PathLike) -> list:
    # subject_2 sorts before subject_10
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _list_images(folder: Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted((p for p in found if _is_image_file(p)), key=_natural_key)


def _match_label(image: Path, labels: Sequence[Path]) -> Path | None:
    """The label map of ``image`` among ``labels``: same file name, else same name up to label words."""
    for label in labels:
        if label.name == image.name:
            return label
    keys = {_without_label_words(_stem(image))}
    # nnU-Net style: image "case_0000" (channel suffix) pairs with label "case"
    keys.add(re.sub(r"_0000$", "", _stem(image)).lower())
    matches = [label for label in labels if _without_label_words(_stem(label)) in keys]
    if len(matches) > 1:
        raise ValueError(f"Several label maps match {image}: {[str(m) for m in matches]}.")
    return matches[0] if matches else None


# ----------------------------------------------------------------------------------------------------------------
# Learn2Reg
# ----------------------------------------------------------------------------------------------------------------


def _find_learn2reg_json(task_dir: PathLike) -> Path:
    path = Path(os.path.expanduser(os.fspath(task_dir))).absolute()
    if path.is_file():
        return path
    folder = _existing_dir(path, "Learn2Reg task folder")
    candidates = sorted(folder.glob("*_dataset.json"))
    if not candidates:
        raise FileNotFoundError(f"No '*_dataset.json' in the Learn2Reg task folder {folder}.")
    if len(candidates) > 1:
        raise ValueError(
            f"Several '*_dataset.json' in {folder}: {[c.name for c in candidates]}; pass the path of the one to use."
        )
    return candidates[0]


def _learn2reg_key(content: dict, key: str, json_path: Path) -> list:
    if key not in content:
        raise ValueError(
            f"Learn2Reg dataset JSON {json_path} has no key {key!r} (keys found: {sorted(content)})."
        )
    value = content[key]
    if not isinstance(value, list):
        raise ValueError(f"Key {key!r} of {json_path} must be a list, got {type(value).__name__}.")
    return value


def learn2reg_datalist(
    task_dir: PathLike,
    section: str = "training",
    pairing: str | None = "auto",
    atlas: PathLike | None = None,
    num_pairs: int | None = None,
    seed: int = 0,
    exclude_validation: bool = True,
) -> list[dict]:
    """
    Pairs of a Learn2Reg task folder, read from its single ``<Task>_dataset.json``.

    The JSON keys used: ``training`` (list of ``{"image", "label"}``), ``training_paired_images``,
    ``registration_val`` and ``registration_test`` (lists of ``{"fixed", "moving"}``); paths are relative to
    the JSON's folder, like ``./imagesTr/OASIS_0001_0000.nii.gz``.

    - ``section="training"``: with ``pairing="auto"`` the explicit ``training_paired_images`` when that list is
      present and not empty, otherwise pairs made from ``training`` with the ``"all"`` strategy;
      ``pairing="paired"`` requires the explicit pairs; ``"atlas"``, ``"all"``, ``"random"`` or ``None`` apply
      that strategy to ``training`` (see :py:mod:`monai_sacb.data.pairing`). Images that appear in
      ``registration_val`` are left out of the training subjects when ``exclude_validation`` is True.
    - ``section="validation"``: the ``registration_val`` pairs; ``section="test"``: ``registration_test``.

    The label map of an image is the ``label`` of its ``training`` entry, else the file at the same path with
    ``imagesTr``/``imagesTs`` replaced by ``labelsTr``/``labelsTs`` when it exists.

    Args:
        task_dir: the task folder, or the path of its ``*_dataset.json``.
        section: ``"training"``, ``"validation"`` or ``"test"``.
        pairing: ``"auto"``, ``"paired"``, a strategy name, or ``None``.
        atlas: atlas image for ``pairing="atlas"`` (absolute, or relative to the task folder).
        num_pairs: number of pairs for ``pairing="random"``.
        seed: random seed for ``pairing="random"``.
        exclude_validation: keep validation images out of pairs built from ``training``.

    Raises:
        FileNotFoundError: no dataset JSON, or a file it names is missing (the message names it).
        ValueError: a key the section needs is missing from the JSON (the message names it).
    """
    json_path = _find_learn2reg_json(task_dir)
    base = json_path.parent
    content = _read_json(json_path, "Learn2Reg dataset JSON")
    if not isinstance(content, dict):
        raise ValueError(f"Learn2Reg dataset JSON {json_path} must hold a JSON object.")
    section = _normalize_section(section)

    def resolve(relative: str) -> str:
        return _existing_file(base / relative, f"file listed in {json_path.name}")

    label_of: dict[str, str] = {}
    for entry in content.get("training", []) or []:
        if isinstance(entry, dict) and entry.get("image") and entry.get("label"):
            label_of[os.path.normpath(base / entry["image"])] = os.path.normpath(base / entry["label"])

    def subject(relative: str) -> dict:
        image = resolve(relative)
        label = label_of.get(image)
        if label is not None:
            return {"image": image, "label": _existing_file(label, f"label listed in {json_path.name}")}
        for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
            parts = Path(image).parts
            if images_dir in parts:
                at = len(parts) - 1 - parts[::-1].index(images_dir)
                candidate = Path(*parts[:at], labels_dir, *parts[at + 1 :])
                if candidate.is_file():
                    return {"image": image, "label": str(candidate)}
        return {"image": image}

    def explicit_pairs(key: str) -> list[dict]:
        pairs = []
        for i, entry in enumerate(_learn2reg_key(content, key, json_path)):
            if not isinstance(entry, dict) or "fixed" not in entry or "moving" not in entry:
                raise ValueError(f"Entry {i} of {key!r} in {json_path} needs 'fixed' and 'moving' keys, got {entry!r}.")
            pairs.append(make_pair(subject(entry["moving"]), subject(entry["fixed"])))
        return _harmonize_labels(pairs)

    if section == "validation":
        return explicit_pairs("registration_val")
    if section == "test":
        return explicit_pairs("registration_test")

    mode = pairing
    if mode == "paired" or (mode == "auto" and content.get("training_paired_images")):
        return explicit_pairs("training_paired_images")
    if mode == "auto":
        mode = "all"
    entries = _learn2reg_key(content, "training", json_path)
    excluded: set[str] = set()
    if exclude_validation:
        for entry in content.get("registration_val", []) or []:
            for side in ("fixed", "moving"):
                if isinstance(entry, dict) and entry.get(side):
                    excluded.add(os.path.normpath(base / entry[side]))
    subjects = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"Entry {i} of 'training' in {json_path} needs an 'image' key, got {entry!r}.")
        if os.path.normpath(base / entry["image"]) not in excluded:
            subjects.append(subject(entry["image"]))
    atlas_subject = None
    if atlas is not None:
        atlas_subject = subject(os.fspath(atlas))
    return make_pairs(subjects, pairing=mode, atlas=atlas_subject, num_pairs=num_pairs, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Plain folders and MONAI-style JSON datalists
# ----------------------------------------------------------------------------------------------------------------


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
    images_dir = _existing_dir(images_dir, "images folder")
    images = _list_images(images_dir, pattern)
    if not images:
        raise ValueError(f"No images matching {pattern!r} with suffix {IMAGE_SUFFIXES} in {images_dir}.")
    labels: list[Path] | None = None
    if labels_dir is not None:
        labels_dir = _existing_dir(labels_dir, "labels folder")
        labels = _list_images(labels_dir, pattern)
        if Path(labels_dir) == images_dir:
            labels = [p for p in labels if _is_label_name(p)]
            images = [p for p in images if not _is_label_name(p)]

    def subject(image: Path, label: PathLike | None = None) -> dict:
        out = {"image": _existing_file(image, "image")}
        if label is not None:
            out["label"] = _existing_file(label, "label map")
        elif labels is not None:
            match = _match_label(image, labels)
            if match is None:
                raise FileNotFoundError(f"No label map for image {image} in {labels_dir}.")
            out["label"] = str(match)
        return out

    atlas_subject = None
    if atlas is not None:
        atlas_path = Path(os.path.expanduser(os.fspath(atlas)))
        if not atlas_path.is_absolute() and not atlas_path.exists():
            atlas_path = images_dir / atlas_path
        atlas_path = Path(_existing_file(atlas_path, "atlas image"))
        if atlas_label is None and labels is not None and _match_label(atlas_path, labels) is None:
            warnings.warn(f"No label map for the atlas {atlas_path} in {labels_dir}: the pairs have no labels.")
            atlas_subject = {"image": str(atlas_path)}
        else:
            atlas_subject = subject(atlas_path, atlas_label)
    subjects = [subject(p) for p in images]
    return make_pairs(subjects, pairing=pairing, atlas=atlas_subject, num_pairs=num_pairs, seed=seed)


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
    json_path = Path(_existing_file(path, "JSON datalist"))
    content = _read_json(json_path, "JSON datalist")
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
                pair[k] = _existing_file(base / os.path.expanduser(pair[k]), f"{k} of entry {i} in {json_path.name}")
        pairs.append(pair)
    return _harmonize_labels(pairs)


# ----------------------------------------------------------------------------------------------------------------
# LPBA40
# ----------------------------------------------------------------------------------------------------------------


def _split_folder(root: Path, section: str) -> Path | None:
    """``root/<train|training|...>`` (any letter case) for ``section``, when such a folder exists."""
    aliases = _SECTION_ALIASES[section]
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in aliases:
            return child
    return None


def _subject_id(path: Path) -> str:
    name = _stem(path)
    match = re.search(r"(?:^|[^a-z0-9])s(\d+)", name, flags=re.IGNORECASE) or re.search(r"(\d+)", name)
    if match:
        return str(int(match.group(1)))
    return _without_label_words(name)


def _lpba40_subjects(folder: Path) -> list[dict]:
    images: dict[str, list[Path]] = {}
    labels: dict[str, list[Path]] = {}
    for path in _list_images(folder, recursive=True):
        in_label_folder = any(
            part.lower().startswith(("label", "seg")) for part in path.relative_to(folder).parts[:-1]
        )
        target = labels if in_label_folder or _is_label_name(path) else images
        target.setdefault(_subject_id(path), []).append(path)
    for kind, found in (("images", images), ("label maps", labels)):
        for sid, paths in found.items():
            if len(paths) > 1:
                raise ValueError(f"Subject {sid} has several {kind} under {folder}: {[str(p) for p in paths]}.")
    orphans = sorted(set(labels) - set(images), key=_natural_key)
    if orphans:
        raise ValueError(f"Label maps without an image under {folder}: {[str(labels[s][0]) for s in orphans]}.")
    subjects = []
    for sid in sorted(images, key=_natural_key):
        subject = {"image": str(images[sid][0])}
        if sid in labels:
            subject["label"] = str(labels[sid][0])
        subjects.append(subject)
    return subjects


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
    root = _existing_dir(root, "LPBA40 folder")
    section = _normalize_section(section)
    folder = _split_folder(root, section)
    if folder is not None:
        subjects = _lpba40_subjects(folder)
    else:
        subjects = _lpba40_subjects(root)
        start, stop = {
            "training": (0, num_train),
            "validation": (num_train, num_train + num_val if num_val > 0 else None),
            "test": (num_train + num_val, None),
        }[section]
        subjects = subjects[start:stop]
        folder = root
    if not subjects:
        raise ValueError(
            f"No LPBA40 subjects for section {section!r} under {folder} "
            f"(num_train={num_train}, num_val={num_val})."
        )
    atlas_subject = None
    if atlas is not None:
        atlas_subject = {"image": _existing_file(atlas, "atlas image")}
        if atlas_label is not None:
            atlas_subject["label"] = _existing_file(atlas_label, "atlas label map")
    return make_pairs(subjects, pairing=pairing, atlas=atlas_subject, num_pairs=num_pairs, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# One switch for bundle configs
# ----------------------------------------------------------------------------------------------------------------


def _folder_layout(base: Path) -> tuple[Path, Path | None]:
    def first(names: Sequence[str]) -> Path | None:
        for child in sorted(base.iterdir()):
            if child.is_dir() and child.name.lower() in names:
                return child
        return None

    images = first(("images", "imagestr", "image", "img"))
    labels = first(("labels", "labelstr", "label", "seg", "segmentations"))
    return (images or base), labels


def make_datalist(
    format: str = "folder", dataset_dir: PathLike | None = None, section: str = "training", **kwargs
) -> list[dict]:
    """
    Datalist of pairs for ``section`` of the data in ``dataset_dir``, in one of the ``DATALIST_FORMATS``.

    Bundle configs call it as ``"$monai_sacb.data.make_datalist(format='learn2reg', dataset_dir=@dataset_dir,
    section='training')"``; extra keyword arguments go to the format's function.

    - ``"learn2reg"``: :py:func:`learn2reg_datalist` on the task folder (``section`` as given).
    - ``"folder"``: :py:func:`folder_datalist`. The section's subfolder (``train``/``training``, ``val``/
      ``validation``, ``test``, any case) is used when it exists, else ``dataset_dir`` itself; inside it,
      ``images/`` (or ``imagesTr/``) and ``labels/`` (or ``labelsTr/``) when present, else the folder's own files
      as images without labels. ``images_dir``/``labels_dir`` keyword arguments override this.
    - ``"json"``: :py:func:`json_datalist` with ``key=section``; ``dataset_dir`` is the JSON file, or a folder
      holding ``datalist.json`` or a single ``*.json``.
    - ``"ixi"``: :py:func:`monai_sacb.data.ixi.ixi_datalist` (``training`` -> ``Train``, ``validation`` -> ``Val``,
      ``test`` -> ``Test``) on the NIfTI layout written by ``python -m monai_sacb.data.ixi``.
    - ``"lpba40"``: :py:func:`lpba40_datalist`.

    Raises:
        ValueError: unknown ``format``, or ``dataset_dir`` unset or missing.
    """
    fmt = str(format).lower()
    if fmt not in DATALIST_FORMATS:
        raise ValueError(f"Unknown datalist format {format!r}; valid formats: {', '.join(DATALIST_FORMATS)}.")
    if dataset_dir is None or not os.fspath(dataset_dir):
        raise ValueError("dataset_dir is not set; pass --dataset_dir /path/to/data.")
    dataset_path = Path(os.path.expanduser(os.fspath(dataset_dir))).absolute()
    if not dataset_path.exists():
        raise ValueError(f"dataset_dir '{dataset_dir}' does not exist; pass --dataset_dir /path/to/data.")
    section = _normalize_section(section)

    if fmt == "learn2reg":
        return learn2reg_datalist(dataset_path, section=section, **kwargs)
    if fmt == "lpba40":
        return lpba40_datalist(dataset_path, section=section, **kwargs)
    if fmt == "ixi":
        from monai_sacb.data.ixi import ixi_datalist  # ixi imports this module

        return ixi_datalist(dataset_path, split=section, **kwargs)
    if fmt == "json":
        json_path = dataset_path
        if dataset_path.is_dir():
            candidates = [dataset_path / "datalist.json"] if (dataset_path / "datalist.json").is_file() else []
            candidates = candidates or sorted(dataset_path.glob("*.json"))
            if len(candidates) != 1:
                raise ValueError(
                    f"Expected datalist.json or a single *.json in {dataset_path}, found "
                    f"{[c.name for c in candidates]}; pass --dataset_dir /path/to/datalist.json."
                )
            json_path = candidates[0]
        kwargs.setdefault("key", section)
        return json_datalist(json_path, **kwargs)
    # folder
    if "images_dir" in kwargs:
        return folder_datalist(**kwargs)
    base = _split_folder(dataset_path, section) or dataset_path
    images_dir, labels_dir = _folder_layout(base)
    kwargs.setdefault("labels_dir", labels_dir)
    return folder_datalist(images_dir, **kwargs)
