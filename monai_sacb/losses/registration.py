# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from monai.losses import (
    BendingEnergyLoss,
    DiffusionLoss,
    GlobalMutualInformationLoss,
    LocalNormalizedCrossCorrelationLoss,
)

from monai_sacb.losses.diffusion import ForwardDiffusionLoss
from monai_sacb.losses.label_overlap import WarpedLabelDiceLoss
from monai_sacb.losses.lncc import FastLocalNormalizedCrossCorrelationLoss

__all__ = ["RegistrationLoss", "SIMILARITY_NAMES", "REGULARIZATION_NAMES", "PAPER_REG_WEIGHTS"]

SIMILARITY_NAMES = ("lncc", "mse", "mi", "sacb_ncc", "monai_lncc")
REGULARIZATION_NAMES = ("diffusion", "bending", "monai_diffusion")

#: lambda of the paper per data set (Abdomen CT: the paper used values between 0.3 and 0.5).
PAPER_REG_WEIGHTS = {"ixi": 3.0, "lpba": 1.0, "abdomen_ct": 0.3}


def _build_similarity(name: str, spatial_dims: int, kwargs: Mapping[str, Any]) -> nn.Module:
    if name in ("lncc", "sacb_ncc"):
        # the paper's NCC: squared local correlation in a 9^3 box window, negated; fast box sums and backward.
        # "lncc" computes MONAI's formula (each variance clamped), "sacb_ncc" the published code's (1e-5 added)
        variant = "monai" if name == "lncc" else "sacb"
        options = {"kernel_size": 9, "variant": variant, **kwargs}
        return FastLocalNormalizedCrossCorrelationLoss(spatial_dims=spatial_dims, **options)
    if name == "monai_lncc":
        # MONAI's convolution-based LNCC, the same values as "lncc" (slower), for comparison
        options = {"kernel_size": 9, "kernel_type": "rectangular", **kwargs}
        return LocalNormalizedCrossCorrelationLoss(spatial_dims=spatial_dims, **options)
    if name == "mse":
        return nn.MSELoss(**kwargs)
    if name == "mi":
        return GlobalMutualInformationLoss(**kwargs)
    raise ValueError(f"unknown similarity {name!r}, valid options are {', '.join(map(repr, SIMILARITY_NAMES))}.")


def _build_regularization(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    if name == "diffusion":
        return ForwardDiffusionLoss(**kwargs)
    if name == "bending":
        return BendingEnergyLoss(**kwargs)
    if name == "monai_diffusion":
        return DiffusionLoss(**kwargs)
    raise ValueError(
        f"unknown regularization {name!r}, valid options are {', '.join(map(repr, REGULARIZATION_NAMES))}."
    )


class RegistrationLoss(nn.Module):
    """
    The unsupervised registration objective of SACB-Net, optionally with a label-overlap term and a zero-motion
    term for pairs known to need no motion::

        loss = similarity_weight * similarity(warped, fixed)
               + label_weight * label_dice(moving_label warped by ddf, fixed_label)
               + reg_weight * regularization(ddf)
               + zero_motion_weight * mean_b(same_geometry_b * mean_p |ddf_b(p)|^2)

    With the defaults this is the paper's loss: negated squared local normalised cross-correlation in a
    9x9x9 window (:py:class:`monai_sacb.losses.FastLocalNormalizedCrossCorrelationLoss`, the values of MONAI's
    ``LocalNormalizedCrossCorrelationLoss`` with a box window, much faster; minimum -1 for a perfect match) plus
    ``lambda`` times the mean squared forward-difference gradient of the ddf
    (:py:class:`monai_sacb.losses.ForwardDiffusionLoss`, zero for a constant field).
    The paper's ``lambda``: IXI 3, LPBA40 1, Abdomen CT 0.3 to 0.5 (see ``PAPER_REG_WEIGHTS``).

    Args:
        similarity: ``"lncc"`` (default: fast box-window LNCC with MONAI's formula, each local variance
            clamped to ``smooth_dr``), ``"sacb_ncc"`` (the same sums with the formula of the published
            SACB-Net/VoxelMorph code, ``cross^2 / (var_I var_J + 1e-5)``; it differs from ``"lncc"`` only in
            windows where ``var_I var_J`` is not much larger than 1e-5, e.g. flat background),
            ``"monai_lncc"`` (MONAI ``LocalNormalizedCrossCorrelationLoss``
            itself, the values of ``"lncc"`` computed with convolutions, slower; kept for comparison),
            ``"mse"`` (``torch.nn.MSELoss``, minimum 0) or ``"mi"`` (MONAI ``GlobalMutualInformationLoss``,
            negated mutual information, for multi-modal pairs).
        regularization: ``"diffusion"`` (default, forward differences, the paper's),
            ``"bending"`` (MONAI ``BendingEnergyLoss``) or ``"monai_diffusion"`` (MONAI ``DiffusionLoss``:
            central differences summed over axes, ``spatial_dims`` times larger than ``"diffusion"`` on an
            affine field; see :py:class:`ForwardDiffusionLoss`).
        reg_weight: ``lambda``, the weight of the regulariser (>= 0). Defaults to 1.0.
        spatial_dims: number of spatial dimensions (used by LNCC). Defaults to 3.
        similarity_kwargs: extra arguments for the similarity loss, e.g. ``{"kernel_size": 7}`` for the LNCC
            losses or ``{"num_bins": 32}`` for MI; they override the defaults above.
        regularization_kwargs: extra arguments for the regulariser, e.g. ``{"normalize": True}`` for bending.
        similarity_weight: weight of the image similarity (>= 0); 0 skips it (a label-only loss, as SynthMorph's).
            Defaults to 1.0.
        label_weight: weight of the label term (>= 0), the soft Dice of the warped moving label map against the
            fixed one (:py:class:`monai_sacb.losses.WarpedLabelDiceLoss`, minimum 0); it needs both label maps (see
            ``forward``). Defaults to 0.0 (unsupervised, the paper's loss).
        label_kwargs: extra arguments for :py:class:`~monai_sacb.losses.WarpedLabelDiceLoss`, e.g.
            ``{"max_labels": 16}``.
        zero_motion_weight: weight (>= 0) of the mean squared displacement (voxels^2) of the pairs flagged as
            sharing one geometry (``same_geometry``: 1 for a pair whose two sides show the same anatomy in the same
            place, e.g. :py:class:`monai_sacb.transforms.RandLabelSynthPaird`'s ``same_geometry_key``, else 0),
            averaged over the batch. The similarity and label terms are flat in regions without contrast and the
            diffusion term ignores a constant shift, so nothing else teaches a network that identical anatomy needs
            no motion. (For SACB-Net's one-pass bias this was not enough: it comes from the parameter-free
            matching, and two epochs of this term did not remove it; docs/accuracy.md.) Defaults to 0.0.

    After each call, ``last_terms`` holds the detached parts ``{"similarity", "label", "zero_motion", "regularization",
    "loss"}`` (0-dim tensors; a term whose weight is 0 is not computed and not listed) so that a trainer can log them.

    Use with ``monai.engines.SupervisedTrainer``: the trainer calls ``loss_function(pred, targets)``; when the
    network returns ``(warped, ddf)`` and ``targets`` is the fixed image, pass the tuple as the first argument
    and leave ``ddf`` out: ``loss((warped, ddf), fixed)`` equals ``loss(warped, fixed, ddf)``. With a label term,
    ``targets`` is the dictionary ``{"fixed_image", "moving_label", "fixed_label"}`` that
    ``PreparePairBatch(target_key=["fixed_image", "moving_label", "fixed_label"])`` makes; with a zero-motion term
    it holds ``"same_geometry"`` too.
    """

    def __init__(
        self,
        similarity: str = "lncc",
        regularization: str = "diffusion",
        reg_weight: float = 1.0,
        spatial_dims: int = 3,
        similarity_kwargs: Mapping[str, Any] | None = None,
        regularization_kwargs: Mapping[str, Any] | None = None,
        similarity_weight: float = 1.0,
        label_weight: float = 0.0,
        label_kwargs: Mapping[str, Any] | None = None,
        zero_motion_weight: float = 0.0,
    ) -> None:
        super().__init__()
        weights = {
            "reg_weight": reg_weight,
            "similarity_weight": similarity_weight,
            "label_weight": label_weight,
            "zero_motion_weight": zero_motion_weight,
        }
        for name, weight in weights.items():
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}.")
        if similarity_weight == 0 and label_weight == 0:
            raise ValueError("similarity_weight and label_weight are both 0: nothing would pull the images together.")
        self.similarity_name = str(similarity).lower()
        self.regularization_name = str(regularization).lower()
        self.similarity = _build_similarity(self.similarity_name, spatial_dims, similarity_kwargs or {})
        self.regularization = _build_regularization(self.regularization_name, regularization_kwargs or {})
        self.label_loss = WarpedLabelDiceLoss(**(label_kwargs or {}))
        self.reg_weight = float(reg_weight)
        self.similarity_weight = float(similarity_weight)
        self.label_weight = float(label_weight)
        self.zero_motion_weight = float(zero_motion_weight)
        self.spatial_dims = spatial_dims
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(
        self,
        warped: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
        fixed: torch.Tensor | Mapping[str, torch.Tensor],
        ddf: torch.Tensor | None = None,
        moving_label: torch.Tensor | None = None,
        fixed_label: torch.Tensor | None = None,
        same_geometry: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            warped: the moving image warped by ``ddf``, shape (B, C, *spatial); or, when ``ddf`` is None, a
                ``(warped, ddf)`` pair (the output of ``SACBNet``) or a ``{"warped_image", "ddf"}`` dictionary
                (the output of :py:class:`monai_sacb.inferers.PairInferer`).
            fixed: the fixed image, shape (B, C, *spatial); or a dictionary with ``"fixed_image"`` and, for the
                label term, ``"moving_label"`` and ``"fixed_label"`` (the targets of a training engine).
            ddf: displacement field in voxels, shape (B, spatial_dims, *spatial).
            moving_label, fixed_label: (B, 1, *spatial) label maps, needed when ``label_weight > 0``.
            same_geometry: (B,) flags, 1 for a pair that needs no motion, needed when ``zero_motion_weight > 0``.

        Returns:
            the scalar loss (0-dim tensor).
        """
        if ddf is None:
            if isinstance(warped, Mapping) and {"warped_image", "ddf"} <= set(warped):
                warped, ddf = warped["warped_image"], warped["ddf"]
            elif isinstance(warped, torch.Tensor) or isinstance(warped, Mapping) or len(warped) != 2:
                raise ValueError(
                    "ddf is missing: call loss(warped, fixed, ddf), loss((warped, ddf), fixed) or "
                    "loss({'warped_image': warped, 'ddf': ddf}, fixed)."
                )
            else:
                warped, ddf = warped
        if ddf.ndim != self.spatial_dims + 2 or ddf.shape[1] != self.spatial_dims:
            raise ValueError(
                f"expecting a ddf of shape (B, {self.spatial_dims}, *spatial), got {tuple(ddf.shape)}; "
                "check spatial_dims and that the network returns (warped, ddf) in this order."
            )
        if isinstance(fixed, Mapping):
            targets = fixed
            fixed = targets.get("fixed_image")
            moving_label = targets.get("moving_label", moving_label)
            fixed_label = targets.get("fixed_label", fixed_label)
            same_geometry = targets.get("same_geometry", same_geometry)
        terms: dict[str, torch.Tensor] = {}
        loss = ddf.new_zeros(())
        if self.similarity_weight > 0:
            if fixed is None:
                raise ValueError("the similarity term needs the fixed image: the targets have no 'fixed_image'.")
            sim = self.similarity(warped, fixed)
            loss = self.similarity_weight * sim
            terms["similarity"] = sim.detach()
        if self.label_weight > 0:
            if moving_label is None or fixed_label is None:
                raise ValueError(
                    "label_weight > 0 needs the moving and fixed label maps: give the training pairs labels and "
                    "use PreparePairBatch(target_key=['fixed_image', 'moving_label', 'fixed_label']) (the bundle "
                    "does this when label_weight > 0), or set label_weight to 0."
                )
            dice = self.label_loss(moving_label, fixed_label, ddf)
            loss = loss + self.label_weight * dice
            terms["label"] = dice.detach()
        if self.zero_motion_weight > 0:
            if same_geometry is None:
                raise ValueError(
                    "zero_motion_weight > 0 needs the same_geometry flags of the pairs: only synthesised pairs have "
                    "them (RandLabelSynthPaird(same_geometry_key='same_geometry') and 'same_geometry' among "
                    "PreparePairBatch's target keys; the bundle does both for the synth data format). Set "
                    "zero_motion_weight to 0 for other data."
                )
            flags = torch.as_tensor(same_geometry, dtype=ddf.dtype, device=ddf.device).reshape(-1)
            if flags.numel() != ddf.shape[0]:
                raise ValueError(f"same_geometry has {flags.numel()} flags for a batch of {ddf.shape[0]} pairs.")
            motion = (flags * ddf.pow(2).sum(1).flatten(1).mean(1)).mean()
            loss = loss + self.zero_motion_weight * motion
            terms["zero_motion"] = motion.detach()
        reg = self.regularization(ddf)
        loss = loss + self.reg_weight * reg
        terms["regularization"] = reg.detach()
        terms["loss"] = loss.detach()
        self.last_terms = terms
        return loss
