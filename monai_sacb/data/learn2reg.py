# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Datalists of a Learn2Reg task folder, read from its single ``<Task>_dataset.json``.

The JSON keys used: ``training`` (list of ``{"image", "label"}``), ``training_paired_images``, ``registration_val``
and ``registration_test`` (lists of ``{"fixed", "moving"}``); paths are relative to the JSON's folder, like
``./imagesTr/OASIS_0001_0000.nii.gz``.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai.config import PathLike

from monai_sacb.data.pairing import harmonize_labels, make_pair, make_pairs
from monai_sacb.data.utils import existing_dir, existing_file, normalize_section, read_json

__all__ = ["learn2reg_datalist", "learn2reg_sections"]

_PAIR_KEYS = {"validation": "registration_val", "test": "registration_test"}
# label maps by convention: the same path with the images folder replaced by the labels folder
_LABEL_FOLDERS = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"))


def _find_dataset_json(task_dir: PathLike) -> Path:
    path = Path(os.path.expanduser(os.fspath(task_dir))).absolute()
    if path.is_file():
        return path
    folder = existing_dir(path, "Learn2Reg task folder")
    candidates = sorted(folder.glob("*_dataset.json"))
    if not candidates:
        raise FileNotFoundError(f"No '*_dataset.json' in the Learn2Reg task folder {folder}.")
    if len(candidates) > 1:
        raise ValueError(
            f"Several '*_dataset.json' in {folder}: {[c.name for c in candidates]}; pass the path of the one to use."
        )
    return candidates[0]


def _label_by_convention(image: str) -> str | None:
    parts = Path(image).parts
    for images_dir, labels_dir in _LABEL_FOLDERS:
        if images_dir in parts:
            at = len(parts) - 1 - parts[::-1].index(images_dir)
            candidate = Path(*parts[:at], labels_dir, *parts[at + 1 :])
            if candidate.is_file():
                return str(candidate)
    return None


class _Learn2RegTask:
    """The content of a task's dataset JSON, its paths resolved against the JSON's folder."""

    def __init__(self, task_dir: PathLike) -> None:
        self.json_path = _find_dataset_json(task_dir)
        self.base = self.json_path.parent
        self.content = read_json(self.json_path, "Learn2Reg dataset JSON")
        if not isinstance(self.content, dict):
            raise ValueError(f"Learn2Reg dataset JSON {self.json_path} must hold a JSON object.")
        self.label_of = {
            self.path(entry["image"]): self.path(entry["label"])
            for entry in self.content.get("training", []) or []
            if isinstance(entry, dict) and entry.get("image") and entry.get("label")
        }

    def path(self, relative: str) -> str:
        """Normalised absolute path of a path listed in the JSON."""
        return os.path.normpath(self.base / relative)

    def entries(self, key: str) -> list:
        """The list under ``key``; a ValueError naming the key when it is missing or not a list."""
        if key not in self.content:
            raise ValueError(
                f"Learn2Reg dataset JSON {self.json_path} has no key {key!r} (keys found: {sorted(self.content)})."
            )
        value = self.content[key]
        if not isinstance(value, list):
            raise ValueError(f"Key {key!r} of {self.json_path} must be a list, got {type(value).__name__}.")
        return value

    def subject(self, relative: str) -> dict:
        """``{"image", "label"?}`` of a listed image: its label from ``training``, else by the folder convention."""
        image = existing_file(self.base / relative, f"file listed in {self.json_path.name}")
        label = self.label_of.get(image)
        if label is not None:
            return {"image": image, "label": existing_file(label, f"label listed in {self.json_path.name}")}
        label = _label_by_convention(image)
        return {"image": image, "label": label} if label is not None else {"image": image}

    def explicit_pairs(self, key: str) -> list[dict]:
        """The ``{"fixed", "moving"}`` pairs listed under ``key``."""
        pairs = []
        for i, entry in enumerate(self.entries(key)):
            if not isinstance(entry, dict) or "fixed" not in entry or "moving" not in entry:
                raise ValueError(
                    f"Entry {i} of {key!r} in {self.json_path} needs 'fixed' and 'moving' keys, got {entry!r}."
                )
            pairs.append(make_pair(self.subject(entry["moving"]), self.subject(entry["fixed"])))
        return harmonize_labels(pairs)

    def validation_images(self) -> set[str]:
        """Paths of the images that ``registration_val`` uses."""
        return {
            self.path(entry[side])
            for entry in self.content.get("registration_val", []) or []
            for side in ("fixed", "moving")
            if isinstance(entry, dict) and entry.get(side)
        }

    def training_subjects(self, exclude_validation: bool) -> list[dict]:
        """The subjects of ``training``, without the validation images when ``exclude_validation``."""
        excluded = self.validation_images() if exclude_validation else set()
        subjects = []
        for i, entry in enumerate(self.entries("training")):
            if not isinstance(entry, dict) or "image" not in entry:
                raise ValueError(f"Entry {i} of 'training' in {self.json_path} needs an 'image' key, got {entry!r}.")
            if self.path(entry["image"]) not in excluded:
                subjects.append(self.subject(entry["image"]))
        return subjects


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
    Pairs of a Learn2Reg task folder (the JSON keys used are listed in the module docstring).

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
    task = _Learn2RegTask(task_dir)
    section = normalize_section(section)
    if section in _PAIR_KEYS:
        return task.explicit_pairs(_PAIR_KEYS[section])
    if pairing == "paired" or (pairing == "auto" and task.content.get("training_paired_images")):
        return task.explicit_pairs("training_paired_images")
    subjects = task.training_subjects(exclude_validation)
    atlas_subject = task.subject(os.fspath(atlas)) if atlas is not None else None
    strategy = "all" if pairing == "auto" else pairing
    return make_pairs(subjects, pairing=strategy, atlas=atlas_subject, num_pairs=num_pairs, seed=seed)


def learn2reg_sections(task_dir: PathLike) -> tuple[str, ...]:
    """The sections the task's dataset JSON lists: ``training`` and the keys of ``validation`` and ``test`` pairs."""
    content = _Learn2RegTask(task_dir).content
    keys = {"training": ("training", "training_paired_images"), **{s: (k,) for s, k in _PAIR_KEYS.items()}}
    return tuple(section for section, names in keys.items() if any(k in content for k in names))
