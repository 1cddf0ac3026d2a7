# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Datalists and transforms of the bundle, chosen by a data format name, so that switching data is a command-line
override (``--data_format lpba40 --dataset_dir /data/LPBA40``), not an edit of the JSON.

- ``"default"``: the embedded default dataset (:py:mod:`monai_sacb.data.default_dataset`, prepared on first use
  into ``dataset_dir``, or the default cache folder when ``dataset_dir`` is empty): training items are copies of
  the template that :py:class:`monai_sacb.transforms.RandSyntheticPaird` turns into a new random pair every
  iteration; validation items are fixed seeded pairs.
- ``"synth"``: the label-synthesis dataset (:py:mod:`monai_sacb.data.synth_dataset`): training items are
  anatomical label maps that :py:class:`monai_sacb.transforms.RandLabelSynthPaird` turns into a new random pair
  (random contrast, independent deformations of both sides) every iteration; validation pairs come from a
  template and a parcellation that training never sees (held-out anatomy).
- ``"learn2reg"``, ``"folder"``, ``"json"``, ``"ixi"``, ``"lpba40"``: :py:func:`monai_sacb.data.make_datalist`,
  read with :py:func:`monai_sacb.transforms.pair_preprocessing`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai.transforms import Compose, LoadImaged

from monai_sacb.data import DATALIST_FORMATS, default_datalist, make_datalist, synth_datalist
from monai_sacb.transforms import RandLabelSynthPaird, RandSyntheticPaird, pair_preprocessing

__all__ = [
    "BUNDLE_DATA_FORMATS",
    "DEFAULT_SPACING",
    "check_data_format",
    "bundle_datalist",
    "bundle_transforms",
    "inference_datalist",
]

BUNDLE_DATA_FORMATS = ("default", "synth") + tuple(DATALIST_FORMATS)
GENERATED_FORMATS = ("default", "synth")
DEFAULT_SPACING = 2.0
"""Voxel size (mm) of the embedded default dataset unless ``spacing`` says otherwise (80x96x80 voxels)."""


def check_data_format(data_format: str) -> str:
    """Lower-case ``data_format``; a ``ValueError`` listing the valid names when it is not one of them."""
    name = str(data_format).lower()
    if name not in BUNDLE_DATA_FORMATS:
        raise ValueError(
            f"unknown data format {data_format!r}; valid: {', '.join(BUNDLE_DATA_FORMATS)} "
            "(e.g. --data_format lpba40 --dataset_dir /data/LPBA40)."
        )
    return name


def bundle_datalist(
    data_format: str = "default",
    dataset_dir: str | os.PathLike | None = None,
    section: str = "training",
    num_samples: int = 32,
    num_pairs: int | None = None,
    spacing: float | Sequence[float] | None = None,
    require_labels: bool = False,
    **kwargs: Any,
) -> list[dict]:
    """
    Datalist of ``section`` (``"training"``, ``"validation"`` or ``"test"``) for a bundle config.

    Args:
        data_format: one of :data:`BUNDLE_DATA_FORMATS`.
        dataset_dir: the data folder (or JSON file); for ``"default"``, the cache folder (empty: default cache).
        section: which part of the data.
        num_samples: ``"default"`` training only: items per epoch (one random pair each).
        num_pairs: keep at most this many pairs (``None``: all); for ``"default"`` validation, the number of
            seeded pairs prepared.
        spacing: ``"default"`` only: voxel size of the prepared dataset (one number; default 2.0 mm).
        require_labels: every pair must have ``moving_label`` and ``fixed_label`` (the validation of
            ``train.json``, whose key metric is the Dice of the warped labels): checked here, before training
            starts, instead of failing after a whole epoch.
        kwargs: further arguments of :py:func:`monai_sacb.data.make_datalist` (e.g. ``pairing="atlas"``).

    Raises:
        ValueError: unknown format, missing ``dataset_dir``, an empty datalist, or pairs without labels when
            ``require_labels`` (the message says which).
    """
    fmt = check_data_format(data_format)
    if fmt == "synth":
        folder = os.fspath(dataset_dir) if dataset_dir else None
        data = synth_datalist(
            "validation" if section in ("test", "testing") else section,
            cache_dir=folder,
            num_samples=int(num_samples),
            num_validation_pairs=int(num_pairs) if num_pairs else 16,
            spacing=_voxel(spacing),
        )
    elif fmt == "default":
        folder = os.fspath(dataset_dir) if dataset_dir else None
        voxel = _voxel(spacing)
        if section in ("test", "testing"):
            section = "validation"
        data = default_datalist(
            section,
            cache_dir=folder,
            num_samples=int(num_samples),
            num_validation_pairs=int(num_pairs) if num_pairs else 8,
            spacing=voxel,
            pair_kwargs=_synthetic_kwargs(voxel),
        )
    else:
        data = make_datalist(format=fmt, dataset_dir=dataset_dir, section=section, **kwargs)
        if num_pairs:
            data = data[: int(num_pairs)]
    if not data:
        raise ValueError(
            f"the {section!r} datalist of data format {fmt!r} in {dataset_dir!r} is empty; check --dataset_dir."
        )
    if require_labels:
        _check_labels(data, fmt, dataset_dir, section)
    return data


_LABEL_HINTS = {
    "folder": "put the label maps in a labels/ folder next to the images (same file names)",
    "json": "give 'moving_label' and 'fixed_label' in every entry of the JSON datalist",
    "learn2reg": "give a 'label' for the images of 'training' in the dataset JSON, or labelsTr/ files",
    "ixi": "convert the IXI pickles with their label maps (python -m monai_sacb.data.ixi)",
    "lpba40": "keep the label files of the LPBA40 release next to the images",
}


def _check_labels(data: list[dict], fmt: str, dataset_dir: Any, section: str) -> None:
    """A ``ValueError`` naming the data, the first pair without labels and the fix, when a pair lacks labels."""
    keys = ("moving_label", "fixed_label")
    missing = [i for i, item in enumerate(data) if not all(item.get(k) for k in keys)]
    if not missing:
        return
    first = data[missing[0]]
    example = {k: first.get(k) for k in ("moving_image", "fixed_image", *keys) if k in first}
    raise ValueError(
        f"{len(missing)} of the {len(data)} {section} pairs of data format {fmt!r} in {dataset_dir!r} have no "
        f"label maps (first: {example}), but validation scores the warped labels (val_mean_dice, the key metric "
        f"that selects model.pt). Give labels: {_LABEL_HINTS.get(fmt, 'add moving_label and fixed_label')}."
    )


def _voxel(spacing: float | Sequence[float] | None) -> float:
    """Voxel size (mm) of a generated dataset: the first of ``spacing``, or :data:`DEFAULT_SPACING`."""
    return float(spacing[0] if isinstance(spacing, Sequence) else spacing) if spacing else DEFAULT_SPACING


def _label_synth_kwargs(spacing: float) -> dict[str, Any]:
    """Arguments of RandLabelSynthPaird at ``spacing`` mm: its defaults are in voxels of 2 mm."""
    factor = DEFAULT_SPACING / spacing
    scales = ((12.0 * factor, 6.0 * factor), (5.0 * factor, 2.0 * factor))
    return {} if factor == 1 else {"scales": scales, "affine_translation": 2.0 * factor, "bias_field_spacing": 24 * factor}


def _synthetic_kwargs(spacing: float) -> dict[str, Any]:
    """Arguments of RandSyntheticPaird for the default data at ``spacing`` mm (deformations defined in mm)."""
    if spacing == DEFAULT_SPACING:
        return {}
    factor = DEFAULT_SPACING / spacing
    return {"max_displacement": (4.0 * factor, 7.0 * factor), "control_spacing": 16 * factor}


def bundle_transforms(
    data_format: str = "default",
    section: str = "training",
    spacing: float | Sequence[float] | None = None,
    intensity: str | Sequence[float] | None = "percentile",
    resample_to_fixed: bool = False,
    labels: bool = True,
    spatial_dims: int | None = 3,
    channels: int | None = 1,
) -> Compose:
    """
    Transforms that turn an item of :py:func:`bundle_datalist` into a pair ``{"moving_image", "fixed_image",
    "moving_label", "fixed_label"}`` of float32 (1, *S) MetaTensors on one grid with S divisible by 16.

    Args:
        data_format: one of :data:`BUNDLE_DATA_FORMATS`.
        section: ``"training"`` gives random synthetic pairs for ``"default"``; otherwise the same as validation.
        spacing: output voxel size in mm for the other formats (None keeps the files' grid); for ``"default"``
            the dataset is prepared at that spacing already (see :py:func:`bundle_datalist`).
        intensity: intensity normalisation of :py:func:`monai_sacb.transforms.pair_preprocessing` for the other
            formats; the default data is in [0, 1] already.
        resample_to_fixed: resample the moving image onto the fixed grid (pairs from different grids).
        labels: also read the label maps when the datalist has them.
        spatial_dims, channels: dimensionality and channel count every file must have (the network's
            ``spatial_dims`` and ``in_channels``); a file that differs is refused by name.
    """
    fmt = check_data_format(data_format)
    label_keys = ("moving_label", "fixed_label") if labels else None
    if fmt not in GENERATED_FORMATS:
        return pair_preprocessing(
            label_keys=label_keys,
            spacing=spacing,
            intensity=intensity,
            resample_to_fixed=resample_to_fixed,
            spatial_dims=spatial_dims,
            channels=channels,
        )
    voxel = _voxel(spacing)
    if fmt == "synth" and section in ("training", "train"):
        return Compose(
            [
                LoadImaged(["label", "image"], ensure_channel_first=True, image_only=True),
                RandLabelSynthPaird(**_label_synth_kwargs(voxel)),
                pair_preprocessing(label_keys=label_keys, spacing=None, intensity=None, load=False),
            ]
        )
    if section in ("training", "train"):
        return Compose(
            [
                LoadImaged(["image", "label"], ensure_channel_first=True, image_only=True),
                RandSyntheticPaird(**_synthetic_kwargs(voxel)),
                pair_preprocessing(label_keys=label_keys, spacing=None, intensity=None, load=False),
            ]
        )
    return pair_preprocessing(
        label_keys=label_keys, spacing=None, intensity=None, spatial_dims=spatial_dims, channels=channels
    )


def inference_datalist(
    moving_image: str | None = None,
    fixed_image: str | None = None,
    moving_label: str | None = None,
    data_format: str = "default",
    dataset_dir: str | os.PathLike | None = None,
    section: str = "test",
    num_pairs: int | None = None,
    **kwargs: Any,
) -> list[dict]:
    """
    Pairs to register at inference: the one pair given by ``moving_image`` and ``fixed_image`` (and optionally
    ``moving_label``), else :py:func:`bundle_datalist` of ``section`` (for ``"default"``, the validation pairs).

    Raises:
        ValueError: only one of ``moving_image`` / ``fixed_image`` given.
        FileNotFoundError: a given file does not exist.
    """
    if moving_image or fixed_image:
        if not (moving_image and fixed_image):
            raise ValueError("give both --moving_image and --fixed_image to register one pair.")
        pair = {"moving_image": moving_image, "fixed_image": fixed_image}
        if moving_label:
            pair["moving_label"] = moving_label
        for key, path in pair.items():
            if not os.path.isfile(os.path.expanduser(os.fspath(path))):
                raise FileNotFoundError(f"--{key}: file not found: {os.path.abspath(os.fspath(path))}")
            pair[key] = os.path.abspath(os.path.expanduser(os.fspath(path)))
        return [pair]
    fmt = check_data_format(data_format)
    try:
        return bundle_datalist(fmt, dataset_dir, section, num_pairs=num_pairs, **kwargs)
    except ValueError as error:
        if fmt in GENERATED_FORMATS or "section" not in str(error).lower():
            raise
        # data sets without a test section: fall back to the validation pairs
        return bundle_datalist(fmt, dataset_dir, "validation", num_pairs=num_pairs, **kwargs)
