# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Fixtures of the handler tests."""

from __future__ import annotations

import pytest
from ignite.engine import Engine


@pytest.fixture
def run_handler():
    """
    ``run_handler(handler, outputs, name="metric") -> (value, details)``: a pass-through evaluation engine run over
    ``outputs`` (one per iteration) with ``handler`` attached; ``details`` is ``engine.state.metric_details[name]``
    (``None`` without ``save_details``).
    """

    def run(handler, outputs, name="metric"):
        engine = Engine(lambda engine, batch: batch)
        handler.attach(engine, name)
        engine.run(outputs, max_epochs=1)
        return engine.state.metrics[name], getattr(engine.state, "metric_details", {}).get(name)

    return run
