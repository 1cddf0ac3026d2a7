# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import LoadImaged, MapTransform

from monai_sacb.data.utils import image_stem

__all__ = ["LoadPaird", "PairNamed", "pair_name", "pair_name_formatter"]


def _describe(value: Any) -> str:
    if isinstance(value, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(value))
        return f"'{path}' (absolute path '{os.path.abspath(path)}')"
    return repr(value)


class LoadPaird(LoadImaged):
    """
    :py:class:`monai.transforms.LoadImaged` for the items of a registration pair, whose errors name the
    dictionary key and the file: a missing path raises ``FileNotFoundError`` and a file that no reader can
    parse (truncated, corrupt, unsupported format) raises ``RuntimeError`` chained to the reader's own error,
    instead of a reader message that names neither the key nor, sometimes, the file.

    All arguments are those of ``LoadImaged`` (e.g. ``keys``, ``reader``, ``ensure_channel_first``,
    ``allow_missing_keys``); loaded images are ``MetaTensor`` of shape (C, *spatial) with
    ``ensure_channel_first=True``, their affine in RAS world millimetres.
    """

    def __call__(self, data: Mapping[Hashable, Any], reader: ImageReader | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, (str, os.PathLike)) and not os.path.exists(os.path.expanduser(os.fspath(value))):
                raise FileNotFoundError(
                    f"{key}: file not found: {_describe(value)}. Check the datalist entry and that relative paths "
                    "are resolved against the data set folder."
                )
        try:
            return super().__call__(d, reader)
        except Exception as error:
            raise RuntimeError(self._explain(d, reader, error)) from error

    def _explain(self, d: dict, reader: ImageReader | None, error: Exception) -> str:
        # the batch load does not say which key failed: retry the keys one by one (failure path only)
        for key in self.key_iterator(d):
            try:
                self._loader(d[key], reader)
            except Exception as key_error:
                return (
                    f"{key}: cannot read {_describe(d[key])}: {type(key_error).__name__}: {key_error}. "
                    "The file may be truncated or corrupt, or in a format no installed reader supports "
                    "(NIfTI, NRRD, MHA, DICOM via ITK/NiBabel); re-export it or fix the datalist entry."
                )
        keys = ", ".join(f"{key}={_describe(d[key])}" for key in self.key_iterator(d))
        return f"loading {keys} failed: {type(error).__name__}: {error}"


class PairNamed(MapTransform):
    """
    Name the outputs of a registration after their pair: set ``filename_or_obj`` of the MetaTensors under
    ``keys`` to ``"<moving stem>_to_<fixed stem>"``, read from the metadata of ``moving_key`` and ``fixed_key``
    (a key's own name stands in for a missing file name). With :py:func:`pair_name_formatter`, ``SaveImaged``
    then writes ``<moving>_to_<fixed>_<postfix>.nii.gz``, so that several pairs sharing one fixed image do not
    overwrite each other's files. Place it after ``Invertd``, which gives the outputs the fixed image's metadata.

    Args:
        keys: the outputs to name, e.g. ``["warped_image", "warped_label", "ddf"]``.
        moving_key, fixed_key: keys of the pair's images.
        allow_missing_keys: don't raise when an output is missing (e.g. no label map).
    """

    def __init__(
        self,
        keys: KeysCollection,
        moving_key: str = "moving_image",
        fixed_key: str = "fixed_image",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.moving_key = moving_key
        self.fixed_key = fixed_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        name = pair_name(d, self.moving_key, self.fixed_key)
        for key in self.key_iterator(d):
            if isinstance(d[key], MetaTensor):
                d[key].meta["filename_or_obj"] = name
        return d


def pair_name(data: Mapping[Hashable, Any], moving_key: str = "moving_image", fixed_key: str = "fixed_image") -> str:
    """
    ``"<moving stem>_to_<fixed stem>"`` from the ``filename_or_obj`` of the pair's images (a key's own name stands
    in for a missing file name): the name :py:class:`PairNamed` gives the outputs, and the pair's name in the
    reports and figures of ``evaluate.json``.
    """
    stems = []
    for key in (moving_key, fixed_key):
        value = data.get(key)
        name = value.meta.get("filename_or_obj") if isinstance(value, MetaTensor) else None
        stems.append(image_stem(str(name)) if name else key)
    return f"{stems[0]}_to_{stems[1]}"


def pair_name_formatter(metadict: dict | None, saver: Any) -> dict:
    """
    ``output_name_formatter`` of ``SaveImaged`` for outputs named by :py:class:`PairNamed`: the file is named
    after ``filename_or_obj`` without its folder and image suffix (``"pair"`` when there is none).
    """
    subject = (metadict or {}).get("filename_or_obj", "")
    return {"subject": image_stem(str(subject)) or "pair", "idx": (metadict or {}).get("patch_index")}
