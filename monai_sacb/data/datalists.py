# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
One entry point for bundle configs: the datalist of a section of the data users bring, by format name.

Every reader returns a list of pair dicts ``{"moving_image", "fixed_image", "moving_label"?, "fixed_label"?}``
holding absolute path strings of files that exist (or, with ``pairing=None``, the unpaired subjects
``{"image", "label"?}``). Label keys are on every pair or on none, so that items batch together.
Images are read later by MONAI's readers, so orientation and spacing come from the file headers.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai.config import PathLike

from monai_sacb.data.folder import (
    find_json_datalist,
    folder_datalist,
    folder_layout,
    folder_sections,
    json_datalist,
    json_sections,
)
from monai_sacb.data.ixi import ixi_datalist, ixi_sections
from monai_sacb.data.learn2reg import learn2reg_datalist, learn2reg_sections
from monai_sacb.data.lpba40 import lpba40_datalist, lpba40_sections
from monai_sacb.data.utils import SECTIONS, normalize_section

__all__ = ["DATALIST_FORMATS", "datalist_sections", "make_datalist"]

DATALIST_FORMATS = ("learn2reg", "folder", "json", "ixi", "lpba40")


def _check_format(format: str) -> str:
    fmt = str(format).lower()
    if fmt not in DATALIST_FORMATS:
        raise ValueError(f"Unknown datalist format {format!r}; valid formats: {', '.join(DATALIST_FORMATS)}.")
    return fmt


def _dataset_path(dataset_dir: PathLike | None) -> Path:
    if dataset_dir is None or not os.fspath(dataset_dir):
        raise ValueError("dataset_dir is not set; pass --dataset_dir /path/to/data.")
    dataset_path = Path(os.path.expanduser(os.fspath(dataset_dir))).absolute()
    if not dataset_path.exists():
        raise ValueError(f"dataset_dir '{dataset_dir}' does not exist; pass --dataset_dir /path/to/data.")
    return dataset_path


def make_datalist(
    format: str = "folder", dataset_dir: PathLike | None = None, section: str = "training", **kwargs
) -> list[dict]:
    """
    Datalist of pairs for ``section`` of the data in ``dataset_dir``, in one of the ``DATALIST_FORMATS``.

    Bundle configs call it as ``"$monai_sacb.data.make_datalist(format='learn2reg', dataset_dir=@dataset_dir,
    section='training')"``; extra keyword arguments go to the format's function.

    - ``"learn2reg"``: :py:func:`~monai_sacb.data.learn2reg.learn2reg_datalist` on the task folder.
    - ``"folder"``: :py:func:`~monai_sacb.data.folder.folder_datalist` on the section's images and labels
      (see :py:func:`~monai_sacb.data.folder.folder_layout`); ``images_dir``/``labels_dir`` keyword arguments
      override this.
    - ``"json"``: :py:func:`~monai_sacb.data.folder.json_datalist` with ``key=section``; ``dataset_dir`` is the
      JSON file, or a folder holding ``datalist.json`` or a single ``*.json``.
    - ``"ixi"``: :py:func:`~monai_sacb.data.ixi.ixi_datalist` (``training`` -> ``Train``, ``validation`` ->
      ``Val``, ``test`` -> ``Test``) on the NIfTI layout written by ``python -m monai_sacb.data.ixi``.
    - ``"lpba40"``: :py:func:`~monai_sacb.data.lpba40.lpba40_datalist`.

    Raises:
        ValueError: unknown ``format``, or ``dataset_dir`` unset or missing.
    """
    fmt = _check_format(format)
    dataset_path = _dataset_path(dataset_dir)
    section = normalize_section(section)
    if fmt == "learn2reg":
        return learn2reg_datalist(dataset_path, section=section, **kwargs)
    if fmt == "lpba40":
        return lpba40_datalist(dataset_path, section=section, **kwargs)
    if fmt == "ixi":
        return ixi_datalist(dataset_path, split=section, **kwargs)
    if fmt == "json":
        kwargs.setdefault("key", section)
        return json_datalist(find_json_datalist(dataset_path), **kwargs)
    if "images_dir" in kwargs:
        return folder_datalist(**kwargs)
    images_dir, labels_dir = folder_layout(dataset_path, section)
    kwargs.setdefault("labels_dir", labels_dir)
    return folder_datalist(images_dir, **kwargs)


def datalist_sections(format: str, dataset_dir: PathLike | None, **kwargs) -> tuple[str, ...]:
    """
    The sections (of :data:`~monai_sacb.data.utils.SECTIONS`) that :py:func:`make_datalist` finds in
    ``dataset_dir`` when given the same arguments, e.g. to fall back to validation pairs where there are no
    test pairs. A section listed here may still fail to read (a missing file); one not listed has no data.

    Raises:
        ValueError: unknown ``format``, or ``dataset_dir`` unset or missing.
    """
    fmt = _check_format(format)
    dataset_path = _dataset_path(dataset_dir)
    if fmt == "learn2reg":
        return learn2reg_sections(dataset_path)
    if fmt == "lpba40":
        split = {k: kwargs[k] for k in ("num_train", "num_val") if k in kwargs}
        return lpba40_sections(dataset_path, **split)
    if fmt == "ixi":
        return ixi_sections(dataset_path)
    if fmt == "json":
        return SECTIONS if "key" in kwargs else json_sections(find_json_datalist(dataset_path))
    if "images_dir" in kwargs:
        return SECTIONS  # one given folder serves every section
    return folder_sections(dataset_path, **{k: kwargs[k] for k in ("pattern",) if k in kwargs})
