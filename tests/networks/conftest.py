# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Fixtures shared by the block and network tests."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

BUNDLE_MODEL = Path(__file__).resolve().parents[2] / "bundle" / "models" / "model.pt"


@pytest.fixture(params=[1, 3])
def threads(request):
    """One thread, and three: a single 3D sample is then cut into slabs along a first axis of 6 or 12."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def _image_pair(shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    moving = 1 + torch.rand(shape, generator=generator, dtype=dtype)
    fixed = 1 + torch.rand(shape, generator=generator, dtype=dtype)
    return moving, fixed


@pytest.fixture
def image_pair():
    """
    ``image_pair(shape, seed=0, dtype=float32)``: a seeded moving and fixed image of ``shape``, values in [1, 2]
    (so zero padding differs from border padding).
    """
    return _image_pair


@pytest.fixture(scope="session")
def bundle_state_dict():
    """The shipped ``bundle/models/model.pt``: a plain state dict of ``SACBNetBackbone()``."""
    return torch.load(BUNDLE_MODEL, map_location="cpu", weights_only=True)


@contextmanager
def _saved_storages():
    """Within the block, the distinct storages autograd saves for backward: a dict, data pointer -> bytes."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storages.setdefault(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield storages


@pytest.fixture
def saved_storages():
    """``with saved_storages() as storages: ...``: ``sum(storages.values())`` is what autograd saved for backward
    inside the block, in bytes, each storage counted once."""
    return _saved_storages
