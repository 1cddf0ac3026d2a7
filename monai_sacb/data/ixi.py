# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
IXI as preprocessed for TransMorph: a one-time conversion of its pickles to NIfTI, and the datalist of the result.

The TransMorph release holds ``atlas.pkl`` and ``Train/``, ``Val/``, ``Test/`` folders of ``subject_*.pkl``,
each a pickled ``(image, label)`` tuple of two 160x192x224 numpy arrays. Unpickling can execute arbitrary
code, so this module reads a pickle only when asked to explicitly (``allow_pickle=True``, or the environment
variable ``MONAI_SACB_ALLOW_PICKLE=1``), and even then accepts nothing but numpy arrays. Convert once::

    python -m monai_sacb.data.ixi /data/IXI_data /data/IXI_nifti --allow_pickle

and read only NIfTI from then on. The converted layout, read by :py:func:`ixi_datalist`::

    IXI_nifti/
        atlas.nii.gz                      atlas_label.nii.gz
        Train/subject_0.nii.gz            Train/subject_0_label.nii.gz   ...
        Val/...                           Test/...

Images are written as float32, label maps as int16 with their original values (remap them to the 30
evaluated structures with :py:class:`monai_sacb.transforms.RemapLabelsd` and ``IXI_LABELS``). The pickles carry
no geometry: the arrays are 1 mm isotropic (TransMorph's preprocessing), so the NIfTI affine is the identity,
voxel ``(i, j, k)`` at ``(i, j, k)`` mm, and MONAI loads them back with the same array axes.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np

from monai.config import PathLike

from monai_sacb.data.pairing import atlas_pairs
from monai_sacb.data.utils import SECTIONS, existing_dir, existing_file, natural_key, normalize_section, save_nifti

__all__ = [
    "ALLOW_PICKLE_ENV",
    "IXI_SPLITS",
    "load_ixi_pickle",
    "convert_ixi_pickles",
    "ixi_datalist",
    "ixi_sections",
]

ALLOW_PICKLE_ENV = "MONAI_SACB_ALLOW_PICKLE"
IXI_SPLITS = ("Train", "Val", "Test")
"""The split folders, in the order of :data:`monai_sacb.data.utils.SECTIONS` (training, validation, test)."""
_CONVERT_COMMAND = "python -m monai_sacb.data.ixi SRC DST --allow_pickle"

# The globals a pickle of numpy arrays refers to; anything else is refused.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        canonical = module.replace("numpy._core", "numpy.core")
        if (canonical, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"Refusing to unpickle {module}.{name}: only numpy arrays are accepted.")
        if canonical.startswith("numpy.core") and hasattr(np, "_core"):
            module = canonical.replace("numpy.core", "numpy._core")  # numpy>=2 deprecates numpy.core
        return super().find_class(module, name)


def _pickle_allowed(allow_pickle: bool) -> bool:
    return bool(allow_pickle) or os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def load_ixi_pickle(path: PathLike, allow_pickle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """
    Read one TransMorph IXI pickle: ``(image float32, label)`` arrays of the same 3D shape.

    Args:
        path: ``atlas.pkl`` or a ``subject_*.pkl``.
        allow_pickle: the explicit opt-in (or set ``MONAI_SACB_ALLOW_PICKLE=1``). Only numpy arrays are accepted.

    Raises:
        PermissionError: without the opt-in.
        ValueError: the file does not hold an (image, label) pair of 3D arrays of one shape.
    """
    path = existing_file(path, "IXI pickle")
    if not _pickle_allowed(allow_pickle):
        raise PermissionError(
            f"Refusing to read {path}: loading a pickle can execute arbitrary code. If you trust the file, pass "
            f"allow_pickle=True (or set {ALLOW_PICKLE_ENV}=1), ideally once, to convert the data set to NIfTI "
            f"with `{_CONVERT_COMMAND}`."
        )
    with open(path, "rb") as f:
        content = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise ValueError(f"{path} must hold an (image, label) pair, got {type(content).__name__}.")
    image, label = (np.asarray(a) for a in content)
    if image.ndim != 3 or image.shape != label.shape:
        raise ValueError(f"{path}: image {image.shape} and label {label.shape} must be 3D arrays of one shape.")
    return image.astype(np.float32), label


def convert_ixi_pickles(src: str, dst: str, allow_pickle: bool = False, overwrite: bool = False) -> dict:
    """
    Convert TransMorph's IXI pickles under ``src`` to NIfTI under ``dst`` (layout in the module docstring).

    Command line: ``python -m monai_sacb.data.ixi SRC DST --allow_pickle [--overwrite]``.

    Args:
        src: folder with ``atlas.pkl`` and ``Train``/``Val``/``Test`` folders of ``subject_*.pkl``.
        dst: output folder (created).
        allow_pickle: the explicit opt-in to unpickle (only numpy arrays are accepted).
        overwrite: replace existing output files; otherwise they are kept and skipped.

    Returns:
        the number of subjects converted per split and the output folder.
    """
    src_dir = existing_dir(src, "IXI pickle folder")
    if not _pickle_allowed(allow_pickle):
        raise PermissionError(
            "Converting the IXI pickles means loading them, which can execute arbitrary code; pass "
            f"--allow_pickle (allow_pickle=True) if you trust {src_dir}."
        )
    dst_dir = Path(dst).absolute()
    jobs = [(src_dir / "atlas.pkl", dst_dir / "atlas")]
    existing_file(jobs[0][0], "IXI atlas")
    counts: dict[str, int] = {}
    for split in IXI_SPLITS:
        found = sorted((src_dir / split).glob("subject_*.pkl"), key=natural_key) if (src_dir / split).is_dir() else []
        counts[split] = len(found)
        jobs += [(p, dst_dir / split / p.name[: -len(".pkl")]) for p in found]
    if not any(counts.values()):
        raise FileNotFoundError(f"No {'/'.join(IXI_SPLITS)}/subject_*.pkl under {src_dir}.")
    for pkl, out in jobs:
        image_path, label_path = out.parent / f"{out.name}.nii.gz", out.parent / f"{out.name}_label.nii.gz"
        if not overwrite and image_path.exists() and label_path.exists():
            continue
        image, label = load_ixi_pickle(pkl, allow_pickle=True)
        # written atomically: a run interrupted mid-file leaves no partial file that the next run would skip
        save_nifti(image, np.eye(4), image_path, space="aligned")
        save_nifti(label.astype(np.int16), np.eye(4), label_path, space="aligned")
    return {"output": str(dst_dir), **counts}


def _subject(image: Path, labels: bool) -> dict:
    """``{"image", "label"?}`` of a converted volume; its label map is ``<name>_label.nii.gz`` beside it."""
    subject = {"image": str(image)}
    if labels:
        subject["label"] = existing_file(image.parent / image.name.replace(".nii.gz", "_label.nii.gz"), "label map")
    return subject


def _split_name(split: str) -> str:
    """The IXI folder of a split or section name: ``"Val"``, ``"val"`` and ``"validation"`` all give ``"Val"``."""
    return IXI_SPLITS[SECTIONS.index(normalize_section(split))]


def ixi_datalist(root: PathLike, split: str = "Train", labels: bool = True) -> list[dict]:
    """
    Atlas-to-subject pairs of converted IXI: ``moving`` = the atlas, ``fixed`` = each subject of ``split``.

    Args:
        root: the folder written by :py:func:`convert_ixi_pickles`.
        split: ``"Train"``, ``"Val"`` or ``"Test"`` (also ``"training"``, ``"validation"``, ``"test"``).
        labels: include ``moving_label``/``fixed_label``.

    Raises:
        FileNotFoundError: the layout is missing (pointing to the converter when only pickles are found),
            or a subject's label map is missing.
    """
    root_dir = existing_dir(root, "IXI folder")
    split_name = _split_name(split)
    split_dir = root_dir / split_name
    atlas = root_dir / "atlas.nii.gz"
    if not atlas.is_file():
        if (root_dir / "atlas.pkl").is_file():
            raise FileNotFoundError(
                f"{root_dir} holds TransMorph pickles, not NIfTI: convert them once with `{_CONVERT_COMMAND}` "
                "and use DST as the dataset folder."
            )
        raise FileNotFoundError(f"IXI atlas not found: {atlas}")
    images = [
        p for p in existing_dir(split_dir, f"IXI {split_name} folder").glob("*.nii.gz")
        if not re.search(r"_label\.nii\.gz$", p.name)
    ]
    if not images:
        raise FileNotFoundError(f"No subject images (*.nii.gz) in {split_dir}.")
    atlas_subject = _subject(atlas, labels)
    return atlas_pairs(atlas_subject, [_subject(p, labels) for p in sorted(images, key=natural_key)])


def ixi_sections(root: PathLike) -> tuple[str, ...]:
    """The sections whose split folder (:data:`IXI_SPLITS`) exists under ``root``."""
    root_dir = existing_dir(root, "IXI folder")
    return tuple(s for s, split in zip(SECTIONS, IXI_SPLITS) if (root_dir / split).is_dir())


if __name__ == "__main__":
    from monai.utils import optional_import

    fire, _ = optional_import("fire")
    fire.Fire(convert_ixi_pickles)
