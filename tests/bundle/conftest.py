# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Shared fixtures of the bundle tests: tiny data (the default dataset at 8 mm, 32^3 voxels) and a short training."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
CONFIGS = BUNDLE / "configs"
TRAIN = str(CONFIGS / "train.json")
INFERENCE = str(CONFIGS / "inference.json")
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
SPACING = 8.0  # the default dataset at 8 mm: 32x32x32 voxels, a fraction of a second per iteration


def tiny_overrides(bundle_root: Path, cache: Path, **kwargs) -> dict:
    """Overrides of train.json for a run of a few iterations on the tiny default data."""
    overrides = {
        "bundle_root": str(bundle_root),
        "ckpt_dir": str(Path(bundle_root) / "models"),
        "data_format": "default",
        "dataset_dir": str(cache),
        "spacing": SPACING,
        "max_epochs": 2,
        "num_samples": 2,
        "num_val_pairs": 2,
        "progress_bar": False,
        "network_def#kmeans_iters": 3,
    }
    overrides.update(kwargs)
    return overrides


def run_workflow(config_file: str | list, workflow_type: str = "train", **overrides):
    """Build, run and finalise a ConfigWorkflow in this process; returns it (its parser holds the objects)."""
    from monai.bundle import ConfigWorkflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = ConfigWorkflow(
            config_file=config_file, meta_file=META, logging_file=LOGGING, workflow_type=workflow_type, **overrides
        )
        workflow.initialize()
        try:
            workflow.run()
        finally:
            workflow.finalize()
    return workflow


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """The default dataset prepared at 8 mm with 2 validation pairs (once per test session)."""
    from monai_sacb.engines import bundle_datalist

    cache = tmp_path_factory.mktemp("cache")
    bundle_datalist("default", cache, "validation", num_pairs=2, spacing=SPACING)
    return cache


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory, tiny_cache) -> Path:
    """A bundle_root holding models/model.pt and checkpoint_epoch=1.pt from one epoch of two iterations."""
    root = tmp_path_factory.mktemp("trained")
    run_workflow(TRAIN, **tiny_overrides(root, tiny_cache, max_epochs=1))
    assert os.path.isfile(root / "models" / "model.pt")
    return root
