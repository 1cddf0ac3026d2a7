# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["TrainProgressBar"]


class TrainProgressBar:
    """
    An Ignite ``ProgressBar`` (tqdm) over the iterations of each epoch, showing the loss, for long CPU epochs.
    Without ``tqdm`` installed it only logs a hint once, so a bundle config can list it unconditionally.

    Args:
        enabled: False to attach nothing (e.g. ``--progress_bar False`` in logs written to files).
        output_transform: maps ``engine.state.output`` to a dict of values shown next to the bar.
        persist: keep each epoch's finished bar on screen.
    """

    def __init__(self, enabled: bool = True, output_transform: Callable | None = None, persist: bool = False) -> None:
        self.enabled = enabled
        self.output_transform = output_transform or _loss
        self.persist = persist

    def attach(self, engine: Any) -> None:
        if not self.enabled:
            return
        if importlib.util.find_spec("tqdm") is None:
            logging.getLogger(__name__).info("pip install tqdm to see a progress bar of each epoch.")
            return
        from ignite.handlers import ProgressBar

        ProgressBar(persist=self.persist).attach(engine, output_transform=self.output_transform)


def _loss(output: Any) -> dict[str, float]:
    if isinstance(output, dict) and "loss" in output:
        loss = output["loss"]
        return {"loss": float(loss.detach()) if hasattr(loss, "detach") else float(loss)}
    return {}
