# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
The bundle's datalists, chosen by a data format name, so that switching data is a command-line override
(``--data_format lpba40 --dataset_dir /data/LPBA40``), not an edit of the JSON.

- ``"synth"``: the label-synthesis dataset (:py:mod:`monai_sacb.apps.synth_dataset`): training items are
  anatomical label maps that :py:class:`monai_sacb.transforms.RandLabelSynthPaird` turns into a new random pair
  every iteration; validation pairs come from a template and a parcellation that training never sees.
- ``"default"``: the embedded default dataset (:py:mod:`monai_sacb.apps.default_dataset`): training items are
  copies of the template that :py:class:`monai_sacb.transforms.RandSyntheticPaird` turns into a new random pair
  every iteration; validation items are fixed seeded pairs.
- ``"learn2reg"``, ``"folder"``, ``"json"``, ``"ixi"``, ``"lpba40"``: pairs of files read by
  :py:func:`monai_sacb.data.make_datalist`.

Each format needs its own training transforms, the *pipeline* (:data:`DATA_PIPELINES`) that the bundle's training
config lists: ``train.json`` lists the ``"synth"`` one, and a second config file given after it replaces it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai_sacb.apps.default_dataset import default_datalist, default_pair_kwargs, prepare_default_dataset
from monai_sacb.apps.synth_dataset import prepare_synth_dataset, synth_datalist
from monai_sacb.apps.utils import DEFAULT_SPACING
from monai_sacb.data import DATALIST_FORMATS, datalist_sections, make_datalist, normalize_section

__all__ = [
    "BUNDLE_DATA_FORMATS",
    "DATA_PIPELINES",
    "DEFAULT_SPACING",
    "bundle_datalist",
    "bundle_label_names",
    "check_data_format",
    "check_pipeline",
    "describe_data",
    "generated_spacing",
    "inference_datalist",
]

BUNDLE_DATA_FORMATS = ("default", "synth", *DATALIST_FORMATS)
DATA_PIPELINES = {"default": "default", "synth": "synth", **{fmt: "files" for fmt in DATALIST_FORMATS}}
"""Data format -> the name of the training transforms it needs (``pipeline`` of :py:func:`bundle_datalist`)."""

_PIPELINE_DATA = {
    "synth": "is the label-synthesis dataset",
    "default": "is the embedded default dataset",
    "files": "is read from files",
}
_PIPELINE_CONFIGS = {"default": "bundle/configs/data_default.json", "files": "bundle/configs/data_files.json"}
# validation pairs of the generated datasets when num_pairs is not given
_GENERATED_PAIRS = {"synth": 16, "default": 8}
_DATA_NOTES = {
    "synth": "held out from training, the FSL MNI152 T1 with its Desikan-Killiany parcellation (94 structures), the "
    "two sides of each pair deformed independently (monai_sacb.apps.prepare_synth_dataset)",
    "default": "random smooth deformations of the ICBM 2009c template with 29 merged AAL regions "
    "(monai_sacb.apps.prepare_default_dataset)",
}
_LABEL_HINTS = {
    "folder": "put the label maps in a labels/ folder next to the images (same file names)",
    "json": "give 'moving_label' and 'fixed_label' in every entry of the JSON datalist",
    "learn2reg": "give a 'label' for the images of 'training' in the dataset JSON, or labelsTr/ files",
    "ixi": "convert the IXI pickles with their label maps (python -m monai_sacb.data.ixi)",
    "lpba40": "keep the label files of the LPBA40 release next to the images",
}


def check_data_format(data_format: str) -> str:
    """Lower-case ``data_format``; a ``ValueError`` listing the valid names when it is not one of them."""
    name = str(data_format).lower()
    if name not in BUNDLE_DATA_FORMATS:
        raise ValueError(
            f"unknown data format {data_format!r}; valid: {', '.join(BUNDLE_DATA_FORMATS)} "
            "(e.g. --data_format lpba40 --dataset_dir /data/LPBA40)."
        )
    return name


def check_pipeline(data_format: str, pipeline: str) -> None:
    """
    A ``ValueError`` naming the data format, the training transforms the config lists (``pipeline``) and the
    config file that fixes it, when they do not fit (see :data:`DATA_PIPELINES`).
    """
    fmt = check_data_format(data_format)
    if pipeline not in _PIPELINE_DATA:
        raise ValueError(f"unknown pipeline {pipeline!r}; valid: {', '.join(_PIPELINE_DATA)}.")
    needed = DATA_PIPELINES[fmt]
    if pipeline == needed:
        return
    where = " --dataset_dir ..." if needed == "files" else ""
    if needed in _PIPELINE_CONFIGS:
        extra = _PIPELINE_CONFIGS[needed]
        fix = (
            f"add {extra} after train.json: --config_file \"['bundle/configs/train.json','{extra}']\" "
            f"--data_format {fmt}{where}"
        )
    else:
        fix = f"drop the extra config file: --config_file bundle/configs/train.json --data_format {fmt}"
    raise ValueError(
        f"data format {fmt!r} {_PIPELINE_DATA[needed]}, but the config lists the training transforms of the "
        f"{pipeline!r} pipeline: {fix}"
    )


def generated_spacing(spacing: float | Sequence[float] | None) -> float:
    """Voxel size (mm) of a generated dataset: the first of ``spacing``, :data:`DEFAULT_SPACING` for 0 or None."""
    first = spacing[0] if isinstance(spacing, Sequence) and spacing else spacing
    return float(first) if first else DEFAULT_SPACING


def bundle_datalist(
    data_format: str = "synth",
    dataset_dir: str | os.PathLike | None = None,
    section: str = "training",
    num_samples: int = 32,
    num_pairs: int | None = None,
    spacing: float | Sequence[float] | None = None,
    require_labels: bool = False,
    pipeline: str | None = None,
    **kwargs: Any,
) -> list[dict]:
    """
    Datalist of ``section`` (``"training"``, ``"validation"`` or ``"test"``) for a bundle config.

    Args:
        data_format: one of :data:`BUNDLE_DATA_FORMATS`.
        dataset_dir: the data folder (or JSON file); for ``"default"`` and ``"synth"``, the cache folder
            (empty: the default cache).
        section: which part of the data; the generated datasets give their validation pairs for ``"test"``.
        num_samples: ``"default"`` and ``"synth"`` training only: items per epoch (one random pair each).
        num_pairs: keep at most this many pairs (``None``: all); for ``"default"`` and ``"synth"`` validation,
            the number of seeded pairs prepared.
        spacing: ``"default"`` and ``"synth"`` only: voxel size of the prepared dataset (one number; 0 or None:
            :data:`DEFAULT_SPACING`). The other formats keep the files' grid here: their transforms resample.
        require_labels: every pair must have ``moving_label`` and ``fixed_label`` (the validation of
            ``train.json``, whose key metric is the Dice of the warped labels, and ``evaluate.json``): checked
            here, before anything runs, instead of failing after a whole epoch.
        pipeline: the training transforms the config lists (``"synth"``, ``"default"`` or ``"files"``); for the
            training section, checked against the data format (see :py:func:`check_pipeline`).
        kwargs: further arguments of :py:func:`monai_sacb.data.make_datalist` (e.g. ``pairing="atlas"``).

    Raises:
        ValueError: unknown format, training transforms that do not fit it, missing ``dataset_dir``, an empty
            datalist, or pairs without labels when ``require_labels`` (the message says which).
    """
    fmt = check_data_format(data_format)
    section = normalize_section(section)
    if pipeline is not None and section == "training":
        check_pipeline(fmt, pipeline)
    cache_dir = os.fspath(dataset_dir) if dataset_dir else None
    if fmt == "synth":
        data = synth_datalist(
            section,
            cache_dir=cache_dir,
            num_samples=int(num_samples),
            num_validation_pairs=int(num_pairs) if num_pairs else _GENERATED_PAIRS[fmt],
            spacing=generated_spacing(spacing),
        )
    elif fmt == "default":
        voxel = generated_spacing(spacing)
        data = default_datalist(
            "validation" if section == "test" else section,
            cache_dir=cache_dir,
            num_samples=int(num_samples),
            num_validation_pairs=int(num_pairs) if num_pairs else _GENERATED_PAIRS[fmt],
            spacing=voxel,
            pair_kwargs=default_pair_kwargs(voxel),
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


def bundle_label_names(
    data_format: str = "synth",
    dataset_dir: str | os.PathLike | None = None,
    num_pairs: int | None = None,
    spacing: float | Sequence[float] | None = None,
) -> dict[str, str] | None:
    """
    Names of the label values of the validation (and test) pairs of :py:func:`bundle_datalist` given the same
    arguments, ``{"value": name}``: the structures of the generated datasets (``"synth"``: the Desikan-Killiany
    parcellation, ``"default"``: the merged AAL regions), read from their manifests; ``None`` for data read from
    files, whose label values the bundle does not name.
    """
    fmt = check_data_format(data_format)
    if fmt not in _GENERATED_PAIRS:
        return None
    cache_dir = os.fspath(dataset_dir) if dataset_dir else None
    count = int(num_pairs) if num_pairs else _GENERATED_PAIRS[fmt]
    voxel = generated_spacing(spacing)
    if fmt == "synth":
        return dict(
            prepare_synth_dataset(cache_dir=cache_dir, num_validation_pairs=count, spacing=voxel)[
                "validation_label_names"
            ]
        )
    info = prepare_default_dataset(
        cache_dir=cache_dir, num_validation_pairs=count, spacing=voxel, pair_kwargs=default_pair_kwargs(voxel)
    )
    return dict(info["label_names"])


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
        f"label maps (first: {example}), but their warped labels are scored (train.json's validation: "
        f"val_mean_dice selects model.pt; evaluate.json: Dice, HD95, ASSD). "
        f"Give labels: {_LABEL_HINTS.get(fmt, 'add moving_label and fixed_label')}."
        + (
            " To train on images without label maps, skip validation: --val_interval 0 (model.pt is then the latest "
            "network, not the best validated one)."
            if section == "validation"
            else ""
        )
    )


def _one_pair(moving_image: str, fixed_image: str, moving_label: str | None) -> dict:
    """The pair given on the command line, its files checked and made absolute."""
    if not (moving_image and fixed_image):
        raise ValueError("give both --moving_image and --fixed_image to register one pair.")
    pair = {"moving_image": moving_image, "fixed_image": fixed_image}
    if moving_label:
        pair["moving_label"] = moving_label
    for key, path in pair.items():
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--{key}: file not found: {path}")
        pair[key] = path
    return pair


def inference_datalist(
    moving_image: str | None = None,
    fixed_image: str | None = None,
    moving_label: str | None = None,
    data_format: str = "synth",
    dataset_dir: str | os.PathLike | None = None,
    section: str = "test",
    num_pairs: int | None = None,
    **kwargs: Any,
) -> list[dict]:
    """
    Pairs to register at inference: the one pair given by ``moving_image`` and ``fixed_image`` (and optionally
    ``moving_label``), else :py:func:`bundle_datalist` of ``section``. Data without a test section (see
    :py:func:`monai_sacb.data.datalist_sections`) give their validation pairs for ``"test"``, as the generated
    datasets do.

    Raises:
        ValueError: only one of ``moving_image`` / ``fixed_image`` given.
        FileNotFoundError: a given file does not exist.
    """
    if moving_image or fixed_image:
        return [_one_pair(moving_image, fixed_image, moving_label)]
    fmt = check_data_format(data_format)
    section = normalize_section(section)
    if section == "test" and fmt in DATALIST_FORMATS:
        sections = datalist_sections(fmt, dataset_dir, **kwargs)
        if "test" not in sections and "validation" in sections:
            section = "validation"
    return bundle_datalist(fmt, dataset_dir, section, num_pairs=num_pairs, **kwargs)


def describe_data(
    data_format: str, section: str, dataset_dir: str | os.PathLike | None, num_pairs: int
) -> str:
    """
    One line saying what a report's pairs are: how many, which data format and section, from where, and for the
    generated datasets what they hold, e.g. ``"16 pairs of data format 'synth', section 'test', from the default
    cache: held out from training, ..."``.
    """
    fmt = check_data_format(data_format)
    where = os.fspath(dataset_dir) if dataset_dir else "the default cache"
    note = f": {_DATA_NOTES[fmt]}" if fmt in _DATA_NOTES else ""
    return f"{int(num_pairs)} pairs of data format {fmt!r}, section {section!r}, from {where}{note}"
