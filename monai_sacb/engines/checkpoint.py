# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Checkpoints of the bundle: loading with clear errors, and resuming an interrupted training run.

File layout written by the bundle's ``train.json`` in ``ckpt_dir`` (``<bundle_root>/models``):

- ``model.pt``: the best network by validation Dice (MONAI ``CheckpointSaver`` with ``key_metric_filename``),
  ``{"model": state_dict, "checkpointer": key-metric tracking state}``;
- ``checkpoint_epoch=<N>.pt``: the latest epoch, ``{"model", "optimizer", "lr_scheduler", "trainer"}``, written
  after every epoch, so an interrupted run loses at most the epoch it was in.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from monai.handlers import CheckpointLoader
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = [
    "LATEST_PATTERN",
    "latest_checkpoint",
    "network_state_dict",
    "check_checkpoint_compatible",
    "CheckedCheckpointLoader",
    "ResumeFromLatest",
    "TrainerCheckpointSaver",
    "KeyMetricTracker",
]

LATEST_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
"""Name of the per-epoch checkpoints written by ``CheckpointSaver(save_interval=1, epoch_level=True)``."""


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """
    Path of the per-epoch checkpoint with the highest epoch in ``ckpt_dir`` (``checkpoint_epoch=<N>.pt``),
    or None when the folder does not exist or holds none.
    """
    found = []
    for path in glob.glob(os.path.join(os.fspath(ckpt_dir), "checkpoint_epoch=*.pt")):
        match = LATEST_PATTERN.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") and isinstance(network.module, torch.nn.Module) else network


def network_state_dict(checkpoint: Any, key: str = "model") -> Mapping[str, torch.Tensor]:
    """The network's state dict inside a loaded checkpoint: ``checkpoint[key]``, or the checkpoint itself."""
    if isinstance(checkpoint, Mapping) and key in checkpoint and isinstance(checkpoint[key], Mapping):
        return checkpoint[key]
    if isinstance(checkpoint, Mapping) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ValueError(f"no network weights under {key!r} in the checkpoint (found: {keys}).")


def check_checkpoint_compatible(
    checkpoint: Any, network: torch.nn.Module, path: str = "<checkpoint>", key: str = "model"
) -> None:
    """
    Raise a ``ValueError`` naming the file and the differences when the network weights in ``checkpoint`` do not
    fit ``network`` (other parameter names, or other shapes: another network, or other ``base_channels`` /
    ``spatial_dims`` / ``in_channels``). The number of k-means clusters does not change the weights.
    """
    state = network_state_dict(checkpoint, key)
    expected = _unwrap(network).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    details = []
    if missing:
        details.append(f"{len(missing)} weights missing from the checkpoint (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"{len(unexpected)} weights the network does not have (e.g. {unexpected[:3]})")
    if shapes:
        details.append(f"{len(shapes)} weights of another shape (e.g. {shapes[:2]})")
    raise ValueError(
        f"checkpoint {path} was not saved from this network ({type(_unwrap(network)).__name__}): "
        + "; ".join(details)
        + ". Use a checkpoint trained with the same network_def arguments, or train a new one into an empty "
        "folder (--ckpt_dir /new/folder)."
    )


def _load(path: str, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error


class CheckedCheckpointLoader(CheckpointLoader):
    """
    :py:class:`monai.handlers.CheckpointLoader` that fails when it is built (so at once, before any data is read),
    with a message saying what to do, when ``load_path`` is missing or holds weights of another network.

    Args:
        load_path: checkpoint file.
        load_dict: objects to restore, e.g. ``{"model": network}``; the entry ``key`` must be the network.
        map_location: as for ``torch.load`` (``"cpu"`` on a machine without GPU).
        key: name of the network in ``load_dict`` and in the checkpoint.
        hint: what the user should do when the file is missing.
        kwargs: further ``CheckpointLoader`` arguments.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        map_location: Any = None,
        key: str = "model",
        hint: str = "train the bundle first (configs/train.json) or pass --ckpt_path /path/to/model.pt",
        **kwargs: Any,
    ) -> None:
        load_path = os.fspath(load_path)
        if not os.path.isfile(load_path):
            raise FileNotFoundError(f"checkpoint not found: {os.path.abspath(load_path)}; {hint}.")
        if key in load_dict and isinstance(load_dict[key], torch.nn.Module):
            check_checkpoint_compatible(_load(load_path, map_location), load_dict[key], load_path, key)
        super().__init__(load_path=load_path, load_dict=load_dict, map_location=map_location, **kwargs)


class ResumeFromLatest:
    """
    Resume training from the latest per-epoch checkpoint in ``ckpt_dir`` (see :py:func:`latest_checkpoint`),
    when there is one; otherwise do nothing and training starts from scratch.

    On ``Events.STARTED`` it restores everything in ``load_dict`` (network, optimizer, LR scheduler, trainer
    state: epoch and iteration; with a :py:class:`KeyMetricTracker`, the best validation metric so far, so that a
    resumed run does not replace a better ``model.pt`` with a worse one), so Ignite goes on with the next epoch.
    The compatibility of the checkpoint with the network is checked when the
    handler is built, so a wrong ``ckpt_dir`` fails at once.

    Attach it before handlers that depend on the restored state (first in the trainer's handler list).

    Args:
        ckpt_dir: the folder the trainer's ``CheckpointSaver`` writes to.
        load_dict: e.g. ``{"model": network, "optimizer": optimizer, "lr_scheduler": scheduler, "trainer": trainer}``.
        map_location: as for ``torch.load``.
        enabled: False to always start from scratch (``--resume False``).
        engine_key: name under which the engine this handler is attached to (the trainer) is restored, unless
            ``load_dict`` has it already (a config cannot name the trainer inside its own handler list).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: dict,
        map_location: Any = None,
        enabled: bool = True,
        engine_key: str = "trainer",
    ) -> None:
        self.logger = logging.getLogger(__name__)
        self.ckpt_dir = os.fspath(ckpt_dir)
        self.engine_key = engine_key
        self.load_path = latest_checkpoint(self.ckpt_dir) if enabled else None
        self.loader: CheckpointLoader | None = None
        if self.load_path is None:
            return
        self.loader = CheckedCheckpointLoader(
            self.load_path,
            load_dict,
            map_location=map_location,
            hint=f"delete {self.ckpt_dir} or pass --resume False to start from scratch",
        )

    def attach(self, engine: Any) -> None:
        if self.loader is not None and self.engine_key not in self.loader.load_dict:
            self.loader.load_dict[self.engine_key] = engine
        if self.loader is None:
            engine.logger.info(f"no checkpoint_epoch=*.pt in {os.path.abspath(self.ckpt_dir)}: training from scratch.")
            return
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        if self.loader is None:
            return
        self.loader(engine)
        engine.logger.info(
            f"resumed from {self.load_path}: epoch {engine.state.epoch} of {engine.state.max_epochs} done, "
            f"iteration {engine.state.iteration}."
        )


class TrainerCheckpointSaver:
    """
    :py:class:`monai.handlers.CheckpointSaver` that adds the engine it is attached to (the trainer) to
    ``save_dict`` under ``engine_key``. A bundle config cannot name the trainer inside the trainer's own handler
    list (a circular reference), so this handler takes it at ``attach`` time.

    Defaults save ``checkpoint_epoch=<N>.pt`` after every epoch and keep only the latest one written by this run.

    Args:
        save_dir: output folder.
        save_dict: objects to save besides the trainer, e.g. ``{"model": network, "optimizer": optimizer}``.
        engine_key: name of the trainer in the checkpoint.
        kwargs: further ``CheckpointSaver`` arguments (defaults ``save_interval=1``, ``epoch_level=True``,
            ``n_saved=1``).
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str = "trainer", **kwargs: Any) -> None:
        self.save_dir = os.fspath(save_dir)
        self.save_dict = dict(save_dict)
        self.engine_key = engine_key
        self.kwargs = {"save_interval": 1, "epoch_level": True, "n_saved": 1, **kwargs}
        self.saver: Any = None

    def attach(self, engine: Any) -> None:
        from monai.handlers import CheckpointSaver

        self.saver = CheckpointSaver(self.save_dir, {**self.save_dict, self.engine_key: engine}, **self.kwargs)
        self.saver.attach(engine)


class KeyMetricTracker:
    """
    The best-metric record of a key-metric :py:class:`monai.handlers.CheckpointSaver` (the one writing
    ``model.pt``) as an object with ``state_dict``/``load_state_dict``, so that it is saved in the per-epoch
    checkpoint and restored on resume, while ``model.pt`` stays a plain state dict of the network.

    Args:
        saver: a ``CheckpointSaver`` built with ``save_key_metric=True``.
    """

    def __init__(self, saver: Any) -> None:
        self.saver = saver

    def _checkpoint(self) -> Any:
        checkpoint = getattr(self.saver, "_key_metric_checkpoint", None)  # MONAI keeps the Ignite Checkpoint here
        if checkpoint is None:
            raise ValueError("KeyMetricTracker needs a CheckpointSaver built with save_key_metric=True.")
        return checkpoint

    def state_dict(self) -> dict:
        return self._checkpoint().state_dict()

    def load_state_dict(self, state_dict: Mapping) -> None:
        self.saver.load_state_dict(dict(state_dict))
