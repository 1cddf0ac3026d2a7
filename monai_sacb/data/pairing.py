# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Pairing strategies: how a list of subjects becomes a list of registration pairs.

A *subject* is a dict ``{"image": path}`` with an optional ``"label"``; a plain path string is read as
``{"image": path}``. A *pair* is a dict with ``"moving_image"`` and ``"fixed_image"`` and, when both subjects
have a label map, ``"moving_label"`` and ``"fixed_label"``.

Strategies (the ``pairing`` argument of the datalist functions):

- ``"atlas"``: atlas-to-subject, one pair per subject, the atlas is always the *moving* image;
- ``"all"``: every ordered pair ``(i, j)`` with ``i != j``, ``n * (n - 1)`` pairs;
- ``"random"``: ``num_pairs`` ordered pairs drawn once with ``seed``, a fixed list (e.g. a validation set);
- ``None``: no pairing, the subjects themselves are returned (input for :py:class:`RandomPairDataset`).

Pairs re-drawn every epoch come from :py:class:`RandomPairDataset`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from monai.data import Dataset
from monai.utils import optional_import

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = [
    "PAIRING_STRATEGIES",
    "PAIR_KEYS",
    "as_subject",
    "make_pair",
    "harmonize_labels",
    "atlas_pairs",
    "all_pairs",
    "random_pairs",
    "make_pairs",
    "subjects_from_pairs",
    "RandomPairDataset",
]

PAIRING_STRATEGIES = ("atlas", "all", "random")
PAIR_KEYS = ("moving_image", "fixed_image", "moving_label", "fixed_label")


def as_subject(subject: dict | str) -> dict:
    """Return ``subject`` as a ``{"image", "label"?}`` dict (a path string becomes ``{"image": path}``)."""
    if isinstance(subject, dict):
        if "image" not in subject:
            raise ValueError(f"A subject needs an 'image' key, got keys {sorted(subject)}.")
        out = {"image": subject["image"]}
        if subject.get("label"):
            out["label"] = subject["label"]
        return out
    return {"image": str(subject)}


def make_pair(moving: dict | str, fixed: dict | str) -> dict:
    """One pair dict; labels are included only when both subjects have one."""
    moving, fixed = as_subject(moving), as_subject(fixed)
    pair = {"moving_image": moving["image"], "fixed_image": fixed["image"]}
    if "label" in moving and "label" in fixed:
        pair["moving_label"] = moving["label"]
        pair["fixed_label"] = fixed["label"]
    return pair


def harmonize_labels(pairs: list[dict]) -> list[dict]:
    """
    ``pairs`` unchanged when every pair or none has labels; otherwise the pairs without their labels, and a warning.

    A batch cannot mix items with and without label keys, so a datalist has labels on every pair or on none.
    """
    with_labels = sum("moving_label" in p for p in pairs)
    if 0 < with_labels < len(pairs):
        warnings.warn(
            f"{len(pairs) - with_labels} of {len(pairs)} pairs have no label maps; "
            "labels are left out of every pair so that items can be batched together."
        )
        return [{k: p[k] for k in ("moving_image", "fixed_image")} for p in pairs]
    return pairs


def atlas_pairs(atlas: dict | str, subjects: Sequence[dict | str]) -> list[dict]:
    """Atlas-to-subject pairs: ``moving`` = atlas, ``fixed`` = each subject (the atlas itself is skipped)."""
    atlas = as_subject(atlas)
    pairs = [make_pair(atlas, s) for s in map(as_subject, subjects) if s["image"] != atlas["image"]]
    return harmonize_labels(pairs)


def all_pairs(subjects: Sequence[dict | str]) -> list[dict]:
    """All ordered pairs ``(moving=i, fixed=j)`` with ``i != j``: ``n * (n - 1)`` pairs, in a fixed order."""
    subjects = [as_subject(s) for s in subjects]
    pairs = [make_pair(m, f) for i, m in enumerate(subjects) for j, f in enumerate(subjects) if i != j]
    return harmonize_labels(pairs)


def _draw_index_pairs(n: int, num_pairs: int, seed: int, epoch: int = 0) -> np.ndarray:
    """``num_pairs`` ordered index pairs ``(i, j)``, ``i != j``, a pure function of ``(n, seed, epoch)``."""
    if n < 2:
        raise ValueError(f"Random pairs need at least 2 subjects, got {n}.")
    rng = np.random.default_rng([int(seed), int(epoch)])
    moving = rng.integers(0, n, size=num_pairs)
    # draw the fixed index among the n - 1 others, so that it never equals the moving one
    fixed = rng.integers(0, n - 1, size=num_pairs)
    fixed = fixed + (fixed >= moving)
    return np.stack([moving, fixed], axis=1)


def random_pairs(
    subjects: Sequence[dict | str], num_pairs: int | None = None, seed: int = 0, epoch: int = 0
) -> list[dict]:
    """
    ``num_pairs`` ordered pairs ``i != j`` drawn with replacement; the same ``(seed, epoch)`` gives the same pairs.

    Args:
        subjects: subject dicts or image paths.
        num_pairs: how many pairs; defaults to the number of subjects.
        seed: random seed.
        epoch: mixed into the seed, so that each epoch gets its own draw.
    """
    subjects = [as_subject(s) for s in subjects]
    num_pairs = len(subjects) if num_pairs is None else int(num_pairs)
    index = _draw_index_pairs(len(subjects), num_pairs, seed, epoch)
    return harmonize_labels([make_pair(subjects[i], subjects[j]) for i, j in index])


def make_pairs(
    subjects: Sequence[dict | str],
    pairing: str | None = "all",
    atlas: dict | str | None = None,
    num_pairs: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """
    Apply a pairing strategy (see the module docstring) to a list of subjects.

    Args:
        subjects: subject dicts (``{"image", "label"?}``) or image paths.
        pairing: ``"atlas"``, ``"all"``, ``"random"``, or ``None`` to return the subjects unpaired.
        atlas: the atlas subject, required by ``"atlas"``.
        num_pairs: number of pairs for ``"random"`` (default: the number of subjects).
        seed: random seed for ``"random"``.

    Raises:
        ValueError: for an unknown strategy, ``"atlas"`` without an atlas, or when no pair can be made.
    """
    if pairing is None or str(pairing).lower() == "none":
        return [as_subject(s) for s in subjects]
    pairing = str(pairing).lower()
    if pairing == "atlas":
        if atlas is None:
            raise ValueError("pairing='atlas' needs an atlas (pass atlas=/path/to/atlas image).")
        pairs = atlas_pairs(atlas, subjects)
    elif pairing == "all":
        pairs = all_pairs(subjects)
    elif pairing == "random":
        pairs = random_pairs(subjects, num_pairs=num_pairs, seed=seed)
    else:
        raise ValueError(f"Unknown pairing {pairing!r}; valid: {', '.join(PAIRING_STRATEGIES)} or None.")
    if not pairs:
        raise ValueError(f"pairing {pairing!r} made no pairs from {len(subjects)} subject(s).")
    return pairs


def subjects_from_pairs(pairs: Sequence[dict]) -> list[dict]:
    """The distinct subjects (moving and fixed sides) of a list of pairs, in order of first appearance."""
    seen: dict[str, dict] = {}
    for pair in pairs:
        for side in ("moving", "fixed"):
            image = pair[f"{side}_image"]
            if image not in seen:
                seen[image] = {"image": image}
                if pair.get(f"{side}_label"):
                    seen[image]["label"] = pair[f"{side}_label"]
    return list(seen.values())


class RandomPairDataset(Dataset):
    """
    A MONAI :py:class:`~monai.data.Dataset` of random subject-to-subject pairs, re-drawn every epoch.

    The pairs of an epoch are a pure function of ``(seed, epoch)``: every process of a distributed run
    draws the same list, and a run resumed at epoch ``e`` sees the pairs it would have seen.

    Call :py:meth:`set_epoch` before each epoch, or let Ignite do it: ``attach(engine)`` registers
    ``set_epoch(engine.state.epoch)`` on ``Events.EPOCH_STARTED``, so the dataset itself can be listed among
    a bundle's ``train#handlers`` (``"@train#dataset"``). Ignite fires ``EPOCH_STARTED`` before it creates the
    epoch's DataLoader iterator, so worker processes see the new draw; with ``persistent_workers=True``
    they would keep the old one.

    Args:
        data: subject dicts (``{"image", "label"?}``), image paths, or pair dicts whose distinct moving and
            fixed subjects are used (e.g. the output of a datalist function).
        transform: transforms applied to each pair dict, as in :py:class:`monai.data.Dataset`.
        num_pairs: pairs per epoch; defaults to the number of subjects.
        seed: random seed.

    Example::

        ds = RandomPairDataset(make_datalist("folder", dataset_dir="/data", pairing=None), transform, seed=0)
        ds.attach(trainer)  # or ds.set_epoch(epoch) in a plain loop
    """

    def __init__(
        self,
        data: Sequence[dict | str],
        transform: Sequence[Callable] | Callable | None = None,
        num_pairs: int | None = None,
        seed: int = 0,
    ) -> None:
        data = list(data)
        if data and isinstance(data[0], dict) and "moving_image" in data[0]:
            self.subjects = subjects_from_pairs(data)
        else:
            self.subjects = [as_subject(s) for s in data]
        if len(self.subjects) < 2:
            raise ValueError(f"RandomPairDataset needs at least 2 subjects, got {len(self.subjects)}.")
        self.num_pairs = len(self.subjects) if num_pairs is None else int(num_pairs)
        self.seed = int(seed)
        self.epoch = 0
        super().__init__(data=random_pairs(self.subjects, self.num_pairs, self.seed, 0), transform=transform)

    def set_epoch(self, epoch: int) -> None:
        """Draw the pairs of ``epoch`` (deterministic for a given seed)."""
        self.epoch = int(epoch)
        self.data = random_pairs(self.subjects, self.num_pairs, self.seed, self.epoch)

    def epoch_started(self, engine: Any) -> None:
        """Ignite event handler: re-draw for ``engine.state.epoch``."""
        self.set_epoch(engine.state.epoch)

    def attach(self, engine: Any) -> None:
        """Register :py:meth:`epoch_started` on ``engine``'s ``Events.EPOCH_STARTED``."""
        if not engine.has_event_handler(self.epoch_started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
