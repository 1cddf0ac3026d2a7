# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Checkpoints of the bundle: loading with clear errors, crash-safe saving, and resuming an interrupted training run.

File layout written by the bundle's ``train.json`` in ``ckpt_dir`` (``<bundle_root>/runs`` by default):

- ``checkpoint_epoch=<N>.pt``: the latest epoch, ``{"model", "optimizer", "lr_scheduler", "trainer",
  "key_metric"}`` (``key_metric``: the best validation metric so far, its epoch and the metric of every
  validated epoch), written after every epoch;
- ``model.pt``: the network with the best validation metric, a plain state dict (Model Zoo layout).

What survives a crash (a ``SIGKILL``, a power cut after the data reached the disk) at any moment:

- every file is written to a temporary file in the same folder (``.<name>.<pid>.<random>.tmp``), flushed,
  ``fsync``-ed and renamed over its target, so a checkpoint or ``model.pt`` is either the complete old or the
  complete new file, never a partial one;
- per epoch the order is: ``checkpoint_epoch=N.pt`` (the commit point, with the new best-metric record), then
  ``model.pt`` when epoch N validated better than every earlier epoch, then the older checkpoints are deleted; the
  previous checkpoint is never removed before the new one is complete;
- on start, :py:class:`ResumeFromLatest` takes the newest checkpoint that reads completely, skips (and reports)
  unreadable or partial ones, removes leftover temporary files, and, when the crash came between the
  checkpoint and ``model.pt``, rewrites ``model.pt`` from the checkpoint (whose network is the best one); so a run
  loses at most the epoch it was in, and ``model.pt`` is only ever replaced by a better validated network.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from monai.handlers import CheckpointLoader
from monai.utils import IgniteInfo, min_version, optional_import

from monai_sacb.data.utils import create_temporary_sibling

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Checkpoint, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Checkpoint")

__all__ = [
    "LATEST_PATTERN",
    "atomic_save",
    "latest_checkpoint",
    "find_resumable_checkpoint",
    "network_state_dict",
    "check_checkpoint_compatible",
    "CheckedCheckpointLoader",
    "ResumeFromLatest",
    "TrainerCheckpointSaver",
    "BestMetricTracker",
]

LATEST_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
"""Name of the per-epoch checkpoints (``checkpoint_epoch=<N>.pt``)."""

_TMP_SUFFIX = ".tmp"

logger = logging.getLogger(__name__)


def _checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """``(epoch, path)`` of every ``checkpoint_epoch=<N>.pt`` in ``ckpt_dir``, newest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(os.fspath(ckpt_dir)), "checkpoint_epoch=*.pt")):
        match = LATEST_PATTERN.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """
    Path of the per-epoch checkpoint with the highest epoch in ``ckpt_dir`` (``checkpoint_epoch=<N>.pt``),
    or None when the folder does not exist or holds none. The file is not read: see
    :py:func:`find_resumable_checkpoint` for the newest one that is complete.
    """
    found = _checkpoints(ckpt_dir)
    return found[0][1] if found else None


def _is_main_process() -> bool:
    """Rank 0, or no distributed run: the process that writes and removes files."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); silently skipped where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike, fsync: bool = True) -> None:
    """
    ``torch.save(obj, path)`` that never leaves a partial ``path``: write a temporary file in the same folder,
    flush and ``fsync`` it, then rename it over ``path`` (atomic on POSIX and Windows) and ``fsync`` the folder.
    A crash at any moment leaves the complete old file or the complete new one (and at worst a
    ``.<name>.<pid>.<random>.tmp`` file, which :py:class:`ResumeFromLatest` removes). The file gets the permissions
    of a plain write (:py:func:`~monai_sacb.data.utils.create_temporary_sibling`), unlike ``tempfile`` files, which
    only their owner can read.
    """
    path = os.fspath(path)
    fd, tmp = create_temporary_sibling(path, _TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if fsync:
        _fsync_dir(os.path.dirname(tmp))


def _remove_temporary_files(ckpt_dir: str) -> list[str]:
    """Remove the temporary files a crashed :py:func:`atomic_save` left in ``ckpt_dir``; returns their names."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(ckpt_dir), f".*{_TMP_SUFFIX}")):
        name = os.path.basename(path)
        if name.endswith(_TMP_SUFFIX) and (name.startswith(".checkpoint_epoch=") or ".pt." in name):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(name)
    return removed


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


def _load(path: str, map_location: Any, option: str = "--ckpt_path") -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"cannot read checkpoint {path}: {type(error).__name__}: {error}. The file is truncated, empty or not a "
            "PyTorch checkpoint (an interrupted copy, or a write cut off by a crash of an older version): use "
            f"another {option}, or copy or train it again."
        ) from error


def _read_network_weights(
    path: str, network: Any, map_location: Any, key: str, what: str, hint: str, option: str
) -> Mapping[str, torch.Tensor]:
    """
    The network weights in the checkpoint file ``path``, or an error naming the file when it is missing (with
    ``hint``), unreadable (naming ``option``), holds no weights under ``key``, or, when ``network`` is a module,
    holds weights of another network. ``what`` names the file in the messages (``"checkpoint"``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {os.path.abspath(path)}; {hint}.")
    checkpoint = _load(path, map_location, option)
    try:
        weights = network_state_dict(checkpoint, key)
    except ValueError as error:
        raise ValueError(f"{what} {path}: {error}") from None
    if isinstance(network, torch.nn.Module):
        check_checkpoint_compatible(weights, network, path, key)
    return weights


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
        network = load_dict.get(key)
        if isinstance(network, torch.nn.Module):
            _read_network_weights(load_path, network, map_location, key, "checkpoint", hint, "--ckpt_path")
        elif not os.path.isfile(load_path):
            raise FileNotFoundError(f"checkpoint not found: {os.path.abspath(load_path)}; {hint}.")
        super().__init__(load_path=load_path, load_dict=load_dict, map_location=map_location, **kwargs)


def _is_complete(checkpoint: Any, required: tuple[str, ...]) -> str | None:
    """None when ``checkpoint`` holds every ``required`` entry, else what is missing (a partial checkpoint)."""
    if not isinstance(checkpoint, Mapping):
        return f"it holds a {type(checkpoint).__name__}, not a dict of states"
    missing = [k for k in required if k not in checkpoint]
    return f"it has no {missing} (found {sorted(map(str, checkpoint))})" if missing else None


def find_resumable_checkpoint(
    ckpt_dir: str | os.PathLike,
    required: tuple[str, ...] = ("model", "trainer"),
    map_location: Any = None,
    network: torch.nn.Module | None = None,
    model_key: str = "model",
) -> tuple[str | None, Any, list[tuple[str, str]]]:
    """
    The newest ``checkpoint_epoch=<N>.pt`` in ``ckpt_dir`` that reads completely and holds every ``required``
    entry, going back to older ones past unreadable (truncated, empty, corrupt) or partial files.

    Args:
        ckpt_dir: the folder.
        required: the entries a checkpoint must hold to resume from it.
        map_location: as for ``torch.load``.
        network: when given, a readable checkpoint whose weights do not fit it raises a ``ValueError`` (the
            folder belongs to another network: a user error, not a crash to step over).
        model_key: the network's entry.

    Returns:
        ``(path, checkpoint, skipped)``: the path and loaded content of the checkpoint (``None, None`` when none
        is usable) and ``(path, reason)`` for every newer file skipped.
    """
    skipped: list[tuple[str, str]] = []
    for _, path in _checkpoints(ckpt_dir):
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # any failure to read is a damaged file
            skipped.append((path, f"unreadable ({type(error).__name__}: {str(error)[:200]})"))
            continue
        if network is not None and isinstance(checkpoint, Mapping) and model_key in checkpoint:
            check_checkpoint_compatible(checkpoint, network, path, model_key)
        problem = _is_complete(checkpoint, required)
        if problem is not None:
            skipped.append((path, f"partial: {problem}"))
            continue
        return path, checkpoint, skipped
    return None, None, skipped


def _schedulers(objects: Mapping) -> list[Any]:
    return [v for v in objects.values() if isinstance(v, torch.optim.lr_scheduler.LRScheduler)]


class ResumeFromLatest:
    """
    Resume training from the newest complete per-epoch checkpoint in ``ckpt_dir`` (see
    :py:func:`find_resumable_checkpoint`), when there is one; otherwise training starts from scratch, or from the
    network weights in ``pretrained`` (fine-tuning, e.g. from the bundle's shipped ``models/model.pt``). So the same
    command both starts a fine-tuning run and resumes it after an interruption; a ``pretrained`` file is read only
    when there is nothing to resume (to fine-tune again from it, train into another ``ckpt_dir``).

    When it is built (so before any data is read) it finds the checkpoint, skipping and reporting newer files
    that are unreadable or partial, and raises a ``ValueError`` saying what to do when the checkpoint holds
    weights of another network, or when ``model.pt`` exists but no checkpoint does (starting from scratch would
    replace a trained ``model.pt``: pass ``--resume False`` to allow it). It also removes temporary files left by
    an interrupted write.

    On ``Events.STARTED`` it restores everything in ``load_dict`` (network, optimizer, LR scheduler, best-metric
    record) and the trainer's epoch and iteration, so Ignite goes on with the next epoch. What the new command
    says wins over what the checkpoint recorded:

    - ``max_epochs``: training continues to the new total. An LR scheduler with ``total_iters`` (the bundle's
      ``PolynomialLR``) gets the new ``total_iters`` and the learning rate is recomputed in closed form for the
      epochs done, ``lr = base_lr * (1 - epoch / max_epochs) ** 0.9``, and logged (a checkpoint of a 1-epoch run
      resumed with ``max_epochs=3`` goes on at ``lr * (2/3) ** 0.9``, not at the 0 the old schedule ended at);
      a ``max_epochs`` below the epochs done is refused with a message;
    - the learning rate (``--learning_rate``): the schedule's base learning rate is the new one;
    - ``num_samples`` (iterations per epoch): the epochs done are kept, the next epochs have the new length (the
      iteration counter is restated as epochs done x new length, as Ignite derives the epoch from it).

    Optimizer moments (Adam) and the best-metric record come from the checkpoint.

    If the checkpoint's record says that its own epoch is the best one and ``model.pt`` does not hold its
    network (the run stopped between writing the checkpoint and ``model.pt``), ``model.pt`` is rewritten from the
    checkpoint (atomically, on rank 0). With ``latest_model`` (a run without validation, whose ``model.pt`` is the
    latest network: ``TrainerCheckpointSaver(save_latest_model=True)``) it is rewritten whenever it does not hold
    the checkpoint's network, so that a run interrupted in its last save, and resumed, ends with the last network.

    Attach it first in the trainer's handler list, before handlers that depend on the restored state.

    Args:
        ckpt_dir: the folder :py:class:`TrainerCheckpointSaver` writes to.
        load_dict: e.g. ``{"model": network, "optimizer": optimizer, "lr_scheduler": scheduler,
            "key_metric": tracker}``.
        map_location: as for ``torch.load``.
        enabled: False to always start from scratch (``--resume False``).
        engine_key: name under which the engine this handler is attached to (the trainer) is restored, unless
            ``load_dict`` has it already (a config cannot name the trainer inside its own handler list).
        best_filename: the best network's file in ``ckpt_dir`` (``model.pt``), None to leave it alone.
        best_key: the :py:class:`BestMetricTracker` entry in ``load_dict`` and in the checkpoint.
        model_key: the network's entry in ``load_dict`` and in the checkpoint.
        pretrained: optional checkpoint (a plain state dict such as ``model.pt``, or a training checkpoint, whose
            ``model_key`` entry is used) of the network's weights to start from when there is no checkpoint to
            resume from; only the network is loaded (the optimizer, schedule and epoch count start afresh). A missing
            file, or one that holds another network's weights, is refused when the handler is built.
        latest_model: ``best_filename`` holds the latest network rather than the best validated one (see above).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: dict,
        map_location: Any = None,
        enabled: bool = True,
        engine_key: str = "trainer",
        best_filename: str | None = "model.pt",
        best_key: str = "key_metric",
        model_key: str = "model",
        pretrained: str | os.PathLike | None = None,
        latest_model: bool = False,
    ) -> None:
        self.logger = logger
        self.ckpt_dir = os.fspath(ckpt_dir)
        self.latest_model = bool(latest_model)
        self.load_dict = dict(load_dict)
        self.map_location = map_location
        self.engine_key = engine_key
        self.best_filename = best_filename
        self.best_key = best_key
        self.model_key = model_key
        self.load_path: str | None = None
        self.checkpoint: Any = None
        self.skipped: list[tuple[str, str]] = []
        self.enabled = enabled
        # "" counts as none, as a config or command line may spell it
        self.pretrained = os.path.abspath(os.fspath(pretrained)) if pretrained not in (None, "") else None
        self._pretrained_weights: Mapping[str, torch.Tensor] | None = None
        network = self.load_dict.get(model_key)
        if self.pretrained is not None:
            hint = (
                "pass the path of a model.pt (the shipped one is the bundle's models/model.pt) or leave "
                "--pretrained_ckpt out to train from scratch"
            )
            self._pretrained_weights = _read_network_weights(
                self.pretrained, network, map_location, model_key, "pretrained weights", hint, "--pretrained_ckpt"
            )
        if not enabled:
            return
        if _is_main_process() and os.path.isdir(self.ckpt_dir):
            removed = _remove_temporary_files(self.ckpt_dir)
            if removed:
                self.logger.warning(f"removed {len(removed)} temporary files of an interrupted write: {removed}")
        required = tuple(k for k in self.load_dict if k != engine_key) + (engine_key,)
        self.load_path, self.checkpoint, self.skipped = find_resumable_checkpoint(
            self.ckpt_dir,
            required=required,
            map_location=map_location,
            network=network if isinstance(network, torch.nn.Module) else None,
            model_key=model_key,
        )
        for path, reason in self.skipped:
            self.logger.warning(f"skipping checkpoint {path}: {reason}.")
        best_path = os.path.join(self.ckpt_dir, best_filename) if best_filename else None
        if self.load_path is None and best_path is not None and os.path.isfile(best_path):
            found = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in self.skipped) or "none"
            raise ValueError(
                f"{os.path.abspath(best_path)} exists but there is no complete checkpoint_epoch=*.pt to resume from "
                f"(checkpoint files: {found}). Training from scratch would replace that model.pt: move it away, "
                "pass --resume False to start from scratch and overwrite it, or train into another --ckpt_dir."
            )

    def attach(self, engine: Any) -> None:
        if self.load_path is None:
            why = "resume disabled" if not self.enabled else "no complete checkpoint_epoch=*.pt in"
            start = "scratch" if self.pretrained is None else f"the network weights of {self.pretrained}"
            engine.logger.info(f"{why} {os.path.abspath(self.ckpt_dir)}: training from {start}.")
            if self.pretrained is not None:
                engine.add_event_handler(Events.STARTED, self._load_pretrained)
            return
        if self.pretrained is not None:
            engine.logger.info(
                f"resuming from {self.load_path}: the pretrained weights {self.pretrained} only start a run (to "
                "fine-tune from them again, train into another --ckpt_dir)."
            )
            self._pretrained_weights = None
        self.load_dict.setdefault(self.engine_key, engine)
        epoch = self._epochs_done()
        max_epochs = engine.state.max_epochs
        if max_epochs is not None and epoch > max_epochs:
            raise ValueError(
                f"{self.load_path} has {epoch} epochs done, more than max_epochs={max_epochs}: pass --max_epochs "
                f"{epoch} or more to go on from it, or --resume False (or another --ckpt_dir) to start again."
            )
        engine.add_event_handler(Events.STARTED, self)

    def _load_pretrained(self, engine: Any) -> None:
        _unwrap(self.load_dict[self.model_key]).load_state_dict(self._pretrained_weights)
        self._pretrained_weights = None  # loaded: free the memory
        engine.logger.info(f"network weights loaded from {self.pretrained}.")

    def _epochs_done(self) -> int:
        state = self.checkpoint[self.engine_key]
        if "epoch" in state:
            return int(state["epoch"])
        length = state.get("epoch_length") or 0
        return int(state.get("iteration", 0)) // length if length else 0

    def __call__(self, engine: Any) -> None:
        if self.checkpoint is None:
            return
        prior_max_epochs, prior_epoch_length = engine.state.max_epochs, engine.state.epoch_length
        schedulers = _schedulers(self.load_dict)
        fresh = [(getattr(s, "total_iters", None), list(s.base_lrs)) for s in schedulers]
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=self.checkpoint)
        engine.state.max_epochs = prior_max_epochs
        if prior_epoch_length and engine.state.epoch_length != prior_epoch_length:
            # Ignite derives the epoch from iteration // epoch_length: count the epochs done in the new length
            engine.logger.info(
                f"the checkpoint's epochs had {engine.state.epoch_length} iterations, this run's have "
                f"{prior_epoch_length}: {engine.state.epoch} epochs done, counted as iteration "
                f"{engine.state.epoch * prior_epoch_length}; the next epochs use the new length."
            )
            engine.state.epoch_length = prior_epoch_length
            engine.state.iteration = engine.state.epoch * prior_epoch_length
        for scheduler, (total, base_lrs) in zip(schedulers, fresh):
            self._follow_new_schedule(engine, scheduler, total, base_lrs)
        engine.logger.info(
            f"resumed from {self.load_path}: epoch {engine.state.epoch} of {engine.state.max_epochs} done, "
            f"iteration {engine.state.iteration}."
        )
        if _is_main_process():
            self._restore_best_file(engine)
        self.checkpoint = None  # restored: free the memory

    def _follow_new_schedule(self, engine: Any, scheduler: Any, total: Any, base_lrs: list) -> None:
        """The restored scheduler with this command's ``total_iters`` and base learning rates (see the class)."""
        saved_total = getattr(scheduler, "total_iters", None)
        if total is not None:
            scheduler.total_iters = total
        scheduler.base_lrs = list(base_lrs)
        groups = scheduler.optimizer.param_groups
        for group, base in zip(groups, base_lrs):
            group["initial_lr"] = base
        closed_form = getattr(scheduler, "_get_closed_form_lr", None)
        if callable(closed_form):
            for group, lr in zip(groups, closed_form()):
                group["lr"] = lr
        scheduler._last_lr = [float(group["lr"]) for group in groups]
        changed = f" (the checkpoint's schedule had {saved_total})" if saved_total != total else ""
        over = f" over {total} epochs{changed}" if total is not None else ""
        engine.logger.info(
            f"learning rate schedule {type(scheduler).__name__}{over}: after epoch {scheduler.last_epoch} the "
            f"learning rate is {scheduler._last_lr[0]:.6g} (base {float(base_lrs[0]):.6g})."
        )

    def _restore_best_file(self, engine: Any) -> None:
        """Rewrite ``model.pt`` from the checkpoint when the crash came between the two writes."""
        if not self.best_filename:
            return
        best_path = os.path.join(self.ckpt_dir, self.best_filename)
        weights = network_state_dict(self.checkpoint, self.model_key)
        if self.latest_model:
            if self._rewrite_if_different(best_path, weights):
                engine.logger.warning(
                    f"{best_path} restored from {self.load_path}: without validation it holds the latest network, "
                    "and the run stopped before model.pt was written."
                )
            return
        record = self.checkpoint.get(self.best_key)
        if not isinstance(record, Mapping) or record.get("best_epoch") is None:
            return
        if int(record["best_epoch"]) != self._epochs_done():
            if not os.path.isfile(best_path):
                engine.logger.warning(
                    f"{best_path} is missing; the best network (epoch {record['best_epoch']}) is lost. It is "
                    "written again when a validation beats its metric."
                )
            return
        if self._rewrite_if_different(best_path, weights):
            engine.logger.warning(
                f"{best_path} restored from {self.load_path}: its epoch {record['best_epoch']} is the best validated "
                "one, and the run stopped before model.pt was written."
            )

    @staticmethod
    def _rewrite_if_different(path: str, weights: Mapping[str, torch.Tensor]) -> bool:
        """Write ``weights`` to ``path`` (atomically) unless it holds them already; True if it wrote."""
        try:
            current = torch.load(path, map_location="cpu", weights_only=True)
            same = set(current) == set(weights) and all(
                torch.equal(current[k].cpu(), v.cpu()) for k, v in weights.items()
            )
        except Exception:  # missing or unreadable
            same = False
        if not same:
            atomic_save({k: v.cpu() for k, v in weights.items()}, path)
        return not same


class BestMetricTracker:
    """
    The best validation metric so far, the epoch that reached it, and the metric of every validated epoch, as an
    object with ``state_dict``/``load_state_dict`` that is saved in (and restored from) the per-epoch checkpoint.

    Attach it to the evaluator (``val_handlers``): after each validation it notes the key metric
    (``engine.state.metrics[metric_name]``, by default the evaluator's key metric) and the epoch.
    :py:class:`TrainerCheckpointSaver` then commits the note with the epoch's checkpoint and writes ``model.pt``
    when the metric is strictly better than every earlier one. Nothing is written by the tracker itself, so a
    validation that a crash cuts off from its checkpoint leaves no trace.

    Args:
        metric_name: the metric to track; None for the evaluator's key metric.
        negative_sign: True when smaller is better (an error instead of a score).
    """

    def __init__(self, metric_name: str | None = None, negative_sign: bool = False) -> None:
        self.metric_name = metric_name
        self.negative_sign = negative_sign
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.history: list[tuple[int, float]] = []
        self.pending: tuple[int, float] | None = None
        self._evaluator: Any = None

    def attach(self, engine: Any) -> None:
        self._evaluator = engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.record)

    def _sync_evaluator(self) -> None:
        """Give the evaluator's own best-metric log (MONAI ``Workflow`` state) the restored record."""
        state = getattr(self._evaluator, "state", None)
        if state is not None and self.best_metric is not None and hasattr(state, "best_metric"):
            state.best_metric = self.best_metric
            state.best_metric_epoch = self.best_epoch if self.best_epoch is not None else -1

    def record(self, engine: Any) -> None:
        """Note the metric of the validation that just ended (evaluator ``EPOCH_COMPLETED``)."""
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise ValueError(
                f"BestMetricTracker: no metric {name!r} after validation (metrics: {sorted(engine.state.metrics)})."
            )
        value = engine.state.metrics[name]
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        self.pending = (int(engine.state.epoch), value)

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_metric is None:
            return True
        return value < self.best_metric if self.negative_sign else value > self.best_metric

    def commit(self, epoch: int) -> bool:
        """Take the note of ``epoch``'s validation into the record; True when it is a new best."""
        if self.pending is None or self.pending[0] != epoch:
            return False
        _, value = self.pending
        self.pending = None
        self.history = [(e, v) for e, v in self.history if e != epoch] + [(epoch, value)]
        if not self._better(value):
            return False
        self.best_metric, self.best_epoch = value, epoch
        return True

    def state_dict(self) -> dict:
        return {
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": [[e, v] for e, v in self.history],
        }

    def load_state_dict(self, state_dict: Mapping) -> None:
        self.pending = None
        best = state_dict.get("best_metric")
        self.best_metric = None if best is None else float(best)
        epoch = state_dict.get("best_epoch")
        self.best_epoch = None if epoch is None else int(epoch)
        self.history = [(int(e), float(v)) for e, v in state_dict.get("history", [])]
        self._sync_evaluator()


class TrainerCheckpointSaver:
    """
    Crash-safe per-epoch checkpoints of a training run and its best network, in this order after each epoch
    (after validation):

    1. ``checkpoint_epoch=<N>.pt``: everything in ``save_dict``, the trainer (under ``engine_key``) and the
       ``best_tracker`` record with this epoch's validation (under ``best_key``), written atomically
       (:py:func:`atomic_save`): the commit point of the epoch;
    2. ``best_filename`` (``model.pt``), the network's plain state dict, only when this epoch's validation beat
       every earlier one (strictly), also atomically;
    3. then, and only then, the older checkpoints are deleted, keeping the newest ``n_saved`` (again at the end
       of training, in case a crash came between step 1 and step 3 of the last epoch).

    A crash between two steps loses nothing: :py:class:`ResumeFromLatest` resumes from the newest complete
    checkpoint and rewrites ``model.pt`` from it when step 2 was cut off. A bundle config cannot name the trainer
    inside the trainer's own handler list, so this handler takes it at ``attach`` time. Only rank 0 writes.

    Args:
        save_dir: output folder.
        save_dict: objects to save besides the trainer and the tracker, e.g. ``{"model": network,
            "optimizer": optimizer, "lr_scheduler": scheduler}``; the network must be under ``model_key``.
        engine_key: name of the trainer in the checkpoint.
        best_tracker: the :py:class:`BestMetricTracker` attached to the evaluator; None: no ``model.pt``.
        best_filename: the best network's file name in ``save_dir``.
        best_key: name of the tracker's record in the checkpoint.
        model_key: name of the network in ``save_dict``.
        save_interval: write a checkpoint every this many epochs (and at the last epoch, and at every epoch
            with a new best, so that ``model.pt`` is always backed by a checkpoint).
        n_saved: per-epoch checkpoints kept (the newest ones).
        save_latest_model: write ``best_filename`` with every checkpoint, the latest network, instead of the best
            validated one: for a run without validation (the bundle's ``--val_interval 0``, e.g. on images without
            label maps), which has no best network but should still leave a ``model.pt``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: dict,
        engine_key: str = "trainer",
        best_tracker: BestMetricTracker | None = None,
        best_filename: str = "model.pt",
        best_key: str = "key_metric",
        model_key: str = "model",
        save_interval: int = 1,
        n_saved: int = 1,
        save_latest_model: bool = False,
    ) -> None:
        if save_interval < 1 or n_saved < 1:
            raise ValueError(f"save_interval and n_saved must be at least 1, got {save_interval}, {n_saved}.")
        if (best_tracker is not None or save_latest_model) and model_key not in save_dict:
            raise ValueError(f"save_dict needs the network under {model_key!r} to write {best_filename}.")
        self.save_dir = os.fspath(save_dir)
        self.save_dict = dict(save_dict)
        self.engine_key = engine_key
        self.best_tracker = best_tracker
        self.best_filename = best_filename
        self.best_key = best_key
        self.model_key = model_key
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.save_latest_model = bool(save_latest_model)
        self.logger = logger

    def attach(self, engine: Any) -> None:
        self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _state(self, engine: Any) -> dict:
        objects = dict(self.save_dict)
        objects[self.engine_key] = engine
        if self.best_tracker is not None:
            objects[self.best_key] = self.best_tracker
        return {
            k: (_unwrap(v).state_dict() if isinstance(v, torch.nn.Module) else v.state_dict())
            for k, v in objects.items()
        }

    def __call__(self, engine: Any) -> None:
        epoch = int(engine.state.epoch)
        previous = None if self.best_tracker is None else (self.best_tracker.best_metric, self.best_tracker.best_epoch)
        new_best = self.best_tracker is not None and self.best_tracker.commit(epoch)
        last = engine.state.max_epochs is not None and epoch >= engine.state.max_epochs
        if not (new_best or last or epoch % self.save_interval == 0) or not _is_main_process():
            return
        state = self._state(engine)
        path = os.path.join(self.save_dir, f"checkpoint_epoch={epoch}.pt")
        atomic_save(state, path)
        self.logger.info(f"Saved checkpoint at epoch: {epoch} ({path})")
        best_path = os.path.join(self.save_dir, self.best_filename)
        if new_best:
            atomic_save(state[self.model_key], best_path)
            was = "" if previous is None or previous[0] is None else f", was {previous[0]:.4f} at epoch {previous[1]}"
            best = self.best_tracker.best_metric  # type: ignore[union-attr]
            self.logger.info(f"Saved {best_path}: best validation metric {best:.4f} at epoch {epoch}{was}.")
        elif self.save_latest_model:
            atomic_save(state[self.model_key], best_path)
            self.logger.info(f"Saved {best_path}: the network of epoch {epoch} (no validation: the latest network).")
        self._prune(epoch)

    def _prune(self, epoch: int) -> None:
        """Delete the checkpoints other than ``epoch``'s and the ``n_saved - 1`` newest before it."""
        kept = 1
        for old_epoch, old_path in _checkpoints(self.save_dir):
            if old_epoch == epoch:
                continue
            if old_epoch < epoch and kept < self.n_saved:
                kept += 1
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(old_path)

    def completed(self, engine: Any) -> None:
        """At the end of training, finish the pruning that a crash after the last checkpoint cut off."""
        epoch = int(engine.state.epoch)
        if _is_main_process() and os.path.isfile(os.path.join(self.save_dir, f"checkpoint_epoch={epoch}.pt")):
            self._prune(epoch)
