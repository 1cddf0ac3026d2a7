# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.data import ImageReader
from monai.transforms import LoadImaged

__all__ = ["LoadPaird"]


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
