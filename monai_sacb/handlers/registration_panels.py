# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""
Ignite handlers that draw the panel of :py:func:`monai_sacb.visualize.registration_panel` for the first pairs of
each evaluator run: as PNG files (:py:class:`RegistrationPanelSaver`, ``evaluate.json``) or as TensorBoard images
(:py:class:`TensorBoardRegistrationPanels`, the validation of ``train.json``).

The arguments they share:

- ``max_pairs``: panels per run (the first pairs of the run); 0 draws none.
- ``keys``: the output item's keys of ``fixed``, ``moving``, ``warped`` (images), ``ddf``, and the optional
  ``fixed_label``, ``moving_label``, ``warped_label``, as a dict overriding :data:`PANEL_KEYS`.
- ``spacing_key``: a MetaTensor on the registration grid whose affine gives the voxel size (the aspect ratio).
- ``pair_name``: ``pair_name(item) -> str``; default ``pair_<index>``.
- ``dpi``: resolution of the panel.

Both read each pair's batch entry updated with its output after the postprocessing
(:py:func:`monai_sacb.handlers.registration_report.engine_items`), the ddf in voxels on the fixed grid; the title
gives the pair's mean Dice over its labels when it has label maps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from monai.data import MetaTensor
from monai.handlers import TensorBoardHandler
from monai.utils import IgniteInfo, min_version, optional_import

from monai_sacb.metrics import compute_label_dice
from monai_sacb.visualize import figure_to_array, registration_panel, save_figure

from .registration_report import engine_items, item_spacing

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["PANEL_KEYS", "RegistrationPanelSaver", "TensorBoardRegistrationPanels", "draw_panel"]

#: where the panel's inputs are in an output item of the bundle's evaluators
PANEL_KEYS = {
    "fixed": "fixed_image",
    "moving": "moving_image",
    "warped": "warped_image",
    "ddf": "ddf",
    "fixed_label": "fixed_label",
    "moving_label": "moving_label",
    "warped_label": "warped_label",
}
_REQUIRED = ("fixed", "moving", "warped", "ddf")


def _plain(value: Any) -> torch.Tensor | None:
    if value is None:
        return None
    value = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
    return value.detach().cpu()


def _mean_dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    dice = compute_label_dice(pred[None].round(), truth[None].round())
    finite = dice[~torch.isnan(dice)]
    return float(finite.mean()) if finite.numel() else float("nan")


def draw_panel(
    item: Mapping[str, Any],
    name: str,
    keys: Mapping[str, str] | None = None,
    spacing_key: str = "fixed_image",
    dpi: int = 100,
) -> Any:
    """
    The panel of one output item (a dict of channel-first tensors), titled with ``name`` and, with label maps, the
    mean Dice of the warped and of the unwarped moving label against the fixed one.

    Raises:
        KeyError: when an image or the ddf is missing from ``item``.
    """
    keys = {**PANEL_KEYS, **dict(keys or {})}
    missing = [keys[k] for k in _REQUIRED if item.get(keys[k]) is None]
    if missing:
        raise KeyError(
            f"a registration panel needs {missing} in the output item (found {sorted(map(str, item))}); the "
            "postprocessing must give the warped image and the ddf (FlattenSubKeysd('pred'))."
        )
    data = {k: _plain(item.get(v)) for k, v in keys.items()}
    title = name
    if data["fixed_label"] is not None and data["warped_label"] is not None:
        title += f"    Dice {_mean_dice(data['warped_label'], data['fixed_label']):.3f}"
        if data["moving_label"] is not None:
            title += f" (no registration {_mean_dice(data['moving_label'], data['fixed_label']):.3f})"
    return registration_panel(
        data["fixed"], data["moving"], data["warped"], data["ddf"],
        fixed_label=data["fixed_label"], moving_label=data["moving_label"], warped_label=data["warped_label"],
        spacing=item_spacing(item.get(spacing_key)), title=title, dpi=dpi,
    )  # fmt: skip


class _PanelHandler:
    """The shared part: count the pairs of a run and draw the first ``max_pairs``."""

    def __init__(
        self,
        max_pairs: int,
        keys: Mapping[str, str] | None,
        spacing_key: str,
        pair_name: Callable[[Mapping[str, Any]], str] | None,
        dpi: int,
    ) -> None:
        if max_pairs < 0:
            raise ValueError(f"max_pairs must be >= 0, got {max_pairs}.")
        self.max_pairs = int(max_pairs)
        self.keys = {**PANEL_KEYS, **dict(keys or {})}
        self.spacing_key = spacing_key
        self.pair_name = pair_name
        self.dpi = dpi
        self.count = 0

    def attach(self, engine: Engine) -> None:
        if self.max_pairs:
            engine.add_event_handler(Events.STARTED, self.reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, engine: Engine | None = None) -> None:
        self.count = 0

    def __call__(self, engine: Engine) -> None:
        for item in engine_items(engine):
            if self.count >= self.max_pairs:
                return
            name = self.pair_name(item) if self.pair_name is not None else f"pair_{self.count:03d}"
            self.emit(engine, name, draw_panel(item, name, self.keys, self.spacing_key, self.dpi))
            self.count += 1

    def emit(self, engine: Engine, name: str, figure: Any) -> None:
        raise NotImplementedError


class RegistrationPanelSaver(_PanelHandler):
    """
    Write the panel of each of the first ``max_pairs`` pairs of a run as ``<output_dir>/<pair name>.png`` (an
    8-bit palette PNG, see :py:func:`monai_sacb.visualize.save_figure`); the other arguments are described in
    :py:mod:`monai_sacb.handlers.registration_panels`.

    Args:
        output_dir: folder of the PNG files (created).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        max_pairs: int = 4,
        keys: Mapping[str, str] | None = None,
        spacing_key: str = "fixed_image",
        pair_name: Callable[[Mapping[str, Any]], str] | None = None,
        dpi: int = 100,
    ) -> None:
        super().__init__(max_pairs, keys, spacing_key, pair_name, dpi)
        self.output_dir = os.fspath(output_dir)
        self.written: list[str] = []

    def reset(self, engine: Engine | None = None) -> None:
        super().reset(engine)
        self.written = []

    def emit(self, engine: Engine, name: str, figure: Any) -> None:
        self.written.append(save_figure(figure, os.path.join(self.output_dir, f"{name}.png")))


class TensorBoardRegistrationPanels(_PanelHandler, TensorBoardHandler):
    """
    Add the panel of each of the first ``max_pairs`` pairs of every evaluator run to TensorBoard, as the image
    ``<tag_name>/<pair name>`` at the step ``step_transform(engine)`` (default ``engine.state.epoch``: inside
    ``ValidationHandler`` the evaluator's epoch is the trainer's). Like MONAI's
    :py:class:`monai.handlers.TensorBoardImageHandler`, it opens its own ``SummaryWriter`` in ``log_dir`` unless
    ``summary_writer`` is given; the other arguments are described in :py:mod:`monai_sacb.handlers.registration_panels`.

    Example (``train.json``, ``validate#handlers``)::

        {
            "_target_": "monai_sacb.handlers.TensorBoardRegistrationPanels",
            "_disabled_": "$not @main_process",
            "log_dir": "@output_dir",
            "max_pairs": 2
        }
    """

    def __init__(
        self,
        summary_writer: Any = None,
        log_dir: str = "./runs",
        max_pairs: int = 2,
        tag_name: str = "registration",
        keys: Mapping[str, str] | None = None,
        spacing_key: str = "fixed_image",
        pair_name: Callable[[Mapping[str, Any]], str] | None = None,
        step_transform: Callable[[Engine], int] | None = None,
        dpi: int = 80,
    ) -> None:
        TensorBoardHandler.__init__(self, summary_writer=summary_writer, log_dir=log_dir)
        _PanelHandler.__init__(self, max_pairs, keys, spacing_key, pair_name, dpi)
        self.tag_name = tag_name
        self.step_transform = step_transform or (lambda engine: engine.state.epoch)

    def emit(self, engine: Engine, name: str, figure: Any) -> None:
        image = np.ascontiguousarray(figure_to_array(figure))
        self._writer.add_image(f"{self.tag_name}/{name}", image, int(self.step_transform(engine)), dataformats="HWC")
        self._writer.flush()
