# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Fixtures of the bundle tests: the bundle's config files, a function that runs a workflow in this process, tiny data
(the default dataset at 8 mm, 32^3 voxels) and a short training. Tiny runs use the config list
``bundle_configs.tiny_train`` (``train.json`` then ``data_default.json``, which selects the default data and its
training transforms) with the overrides of ``tiny_overrides``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

TINY_SPACING = 8.0  # the default dataset at 8 mm: 32x32x32 voxels, a fraction of a second per iteration


@pytest.fixture(scope="session")
def bundle_configs() -> SimpleNamespace:
    """
    Paths of the bundle: ``root`` (the bundle folder), ``train``, ``inference``, ``multi_gpu``, ``data_default``,
    ``data_files``, ``meta``, ``logging`` (config files, as strings), ``tiny_train`` (the config list of tiny
    runs: ``[train, data_default]``) and ``tiny_spacing`` (mm, the voxel size of the tiny data).
    """
    root = Path(__file__).resolve().parents[2] / "bundle"
    configs = root / "configs"
    paths = {
        name: str(configs / f"{name}.json")
        for name in ("train", "inference", "data_default", "data_files", "metadata")
    }
    namespace = SimpleNamespace(
        root=root,
        train=paths["train"],
        inference=paths["inference"],
        multi_gpu=str(configs / "multi_gpu_train.json"),
        data_default=paths["data_default"],
        data_files=paths["data_files"],
        meta=paths["metadata"],
        logging=str(configs / "logging.conf"),
        tiny_spacing=TINY_SPACING,
    )
    namespace.tiny_train = [namespace.train, namespace.data_default]
    for name, value in vars(namespace).items():
        if name not in ("root", "tiny_spacing", "tiny_train"):
            assert os.path.isfile(value), f"bundle file missing: {value}"
    return namespace


@pytest.fixture(scope="session")
def tiny_overrides():
    """
    ``tiny_overrides(bundle_root, cache, **kwargs) -> dict``: overrides of ``bundle_configs.tiny_train`` for a run of
    two epochs of two iterations on the tiny default data prepared in ``cache``; ``kwargs`` replace or add entries.
    """

    def make(bundle_root: Path, cache: Path, **kwargs) -> dict:
        overrides = {
            "bundle_root": str(bundle_root),
            "ckpt_dir": str(Path(bundle_root) / "models"),
            "dataset_dir": str(cache),
            "spacing": TINY_SPACING,
            "max_epochs": 2,
            "num_samples": 2,
            "num_val_pairs": 2,
            "progress_bar": False,
            "network_def#kmeans_iters": 3,
        }
        overrides.update(kwargs)
        return overrides

    return make


@pytest.fixture(scope="session")
def run_bundle(bundle_configs):
    """
    ``run_bundle(config_file, workflow_type="train", **overrides)``: build, run and finalise a ``ConfigWorkflow`` of
    the bundle in this process (with the bundle's metadata and logging config); returns it, its parser holds the
    objects.
    """
    from monai.bundle import ConfigWorkflow

    def run(config_file: str | list, workflow_type: str = "train", **overrides):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            workflow = ConfigWorkflow(
                config_file=config_file,
                meta_file=bundle_configs.meta,
                logging_file=bundle_configs.logging,
                workflow_type=workflow_type,
                **overrides,
            )
            workflow.initialize()
            try:
                workflow.run()
            finally:
                workflow.finalize()
        return workflow

    return run


@pytest.fixture(scope="session")
def error_chain():
    """``error_chain(excinfo) -> str``: every message along an exception chain (MONAI wraps config errors)."""

    def chain(info) -> str:
        error, messages = info.value, []
        while error is not None:
            messages.append(str(error))
            error = error.__cause__ or error.__context__
        return "\n".join(messages)

    return chain


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """The default dataset prepared at 8 mm with 2 validation pairs (once per test session)."""
    from monai_sacb.apps import bundle_datalist

    cache = tmp_path_factory.mktemp("cache")
    pairs = bundle_datalist("default", cache, "validation", num_pairs=2, spacing=TINY_SPACING)
    assert len(pairs) == 2
    return cache


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory, tiny_cache, bundle_configs, tiny_overrides, run_bundle) -> Path:
    """A bundle_root holding models/model.pt and checkpoint_epoch=1.pt from one epoch of two iterations."""
    root = tmp_path_factory.mktemp("trained")
    run_bundle(bundle_configs.tiny_train, **tiny_overrides(root, tiny_cache, max_epochs=1))
    assert os.path.isfile(root / "models" / "model.pt")
    return root


@pytest.fixture(scope="session")
def bundle_network(bundle_configs):
    """A new instance of the network that ``inference.json`` builds (its ``network_def``)."""
    from monai.bundle import ConfigParser

    def build():
        parser = ConfigParser()
        parser.read_config(bundle_configs.inference)
        return parser.get_parsed_content("network_def", instantiate=True)

    return build
