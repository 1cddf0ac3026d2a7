# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Helpers shared by the datalist readers: file names and suffixes, section names, existing files and folders,
JSON reading, and atomic NIfTI and JSON writes.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai.config import PathLike

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_WORDS",
    "SECTIONS",
    "SECTION_ALIASES",
    "atomic_write",
    "create_temporary_sibling",
    "existing_dir",
    "existing_file",
    "image_stem",
    "is_label_name",
    "label_free_stem",
    "list_images",
    "natural_key",
    "normalize_section",
    "read_json",
    "save_json",
    "save_nifti",
    "section_folder",
]


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File name endings the datalists read as images."""

SECTION_ALIASES = {
    "training": ("training", "train", "tr"),
    "validation": ("validation", "val", "valid"),
    "test": ("test", "testing", "ts"),
}
"""Section name -> the names (any letter case) that mean it, as arguments and as folder names."""
SECTIONS = tuple(SECTION_ALIASES)

LABEL_WORDS = ("label", "labels", "seg", "segmentation")
"""Words of a file name that mark a label map (``case01_seg.nii.gz``, ``S01.structure.label.nii.gz``)."""


def normalize_section(section: str) -> str:
    """The name in :data:`SECTIONS` that ``section`` means (``"train"`` -> ``"training"``); a ValueError otherwise."""
    name = str(section).lower()
    for canonical, aliases in SECTION_ALIASES.items():
        if name in aliases:
            return canonical
    raise ValueError(f"Unknown section {section!r}; valid: {', '.join(SECTIONS)}.")


def section_folder(root: Path, section: str) -> Path | None:
    """The subfolder of ``root`` named after ``section`` (``train``, ``Validation``, ``ts``, ...), if there is one."""
    aliases = SECTION_ALIASES[normalize_section(section)]
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in aliases:
            return child
    return None


def image_stem(path: PathLike) -> str:
    """File name without its folder and image suffix (``/a/b.nii.gz`` -> ``b``); other names are kept whole."""
    name = os.path.basename(os.fspath(path))
    for suffix in (*IMAGE_SUFFIXES, ".pt"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _words(stem: str) -> list[str]:
    return [w for w in re.split(r"[._\-\s]+", stem.lower()) if w]


def is_label_name(path: PathLike) -> bool:
    """Whether the file name has one of the :data:`LABEL_WORDS`."""
    return any(w in LABEL_WORDS for w in _words(image_stem(path)))


def label_free_stem(path: PathLike) -> str:
    """The lower-case words of the file's stem without :data:`LABEL_WORDS`: ``Case-01_seg.nii.gz`` -> ``case_01``."""
    return "_".join(w for w in _words(image_stem(path)) if w not in LABEL_WORDS)


def natural_key(path: PathLike) -> list:
    """Sort key that orders the numbers inside names by value: ``subject_2`` before ``subject_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def list_images(folder: Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`) of ``folder`` matching ``pattern``, in :py:func:`natural_key` order."""
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted((p for p in found if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)), key=natural_key)


def existing_file(path: PathLike, what: str = "file") -> str:
    """Absolute, normalised path string of an existing file; a FileNotFoundError naming it otherwise."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def existing_dir(path: PathLike, what: str = "folder") -> Path:
    """Absolute path of an existing folder; a FileNotFoundError naming it otherwise."""
    path = Path(os.path.expanduser(os.fspath(path))).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def read_json(path: PathLike, what: str) -> Any:
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


def create_temporary_sibling(path: str | os.PathLike, suffix: str) -> tuple[int, str]:
    """
    A new file next to ``path``, ``.<name>.<pid>.<random><suffix>``, created exclusively and opened for writing:
    ``(file descriptor, its path)``. Renamed over ``path``, it has the permissions a plain ``open(path, "w")``
    would give: those of the file it replaces, else ``0o666`` less the umask (a ``tempfile`` file is readable by
    its owner only, and stays so when renamed into place).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    replaced = stat.S_IMODE(os.stat(path).st_mode) if os.path.isfile(path) else None
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    if replaced is not None:
        os.chmod(tmp, replaced)
    return fd, tmp


def atomic_write(path: Path, write: Any) -> None:
    """
    Run ``write(tmp_path)`` on a temporary file next to ``path`` then rename it, so ``path`` is never partial. The
    file gets the permissions of a plain ``open(path, "w")``: those of the file it replaces, else ``0o666`` less the
    umask (:py:func:`create_temporary_sibling`).
    """
    # the temporary name keeps the final suffixes: nibabel picks gzip compression from ".nii.gz"
    fd, tmp = create_temporary_sibling(path, "".join(path.suffixes[-2:]))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, space: str = "mni") -> None:
    """
    Write ``array`` with ``affine`` (RAS mm) to ``path`` atomically.

    Args:
        space: the NIfTI name of the space the affine maps to: ``"mni"`` (MNI152, the generated datasets) or
            ``"aligned"`` (aligned to some other reference, e.g. the IXI atlas).
    """
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=space)
    img.set_qform(affine, code=space)
    atomic_write(path, lambda tmp: nib.save(img, tmp))
