# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from monai.inferers import Inferer
from monai.transforms.utils import compute_divisible_spatial_size

from monai_sacb.networks.blocks.warp import warp_with_ddf

__all__ = ["PairInferer", "foreground_box", "symmetric_ddf"]


def symmetric_ddf(forward_ddf: torch.Tensor, backward_ddf: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """
    Average two fields that should be inverses of each other: the solution ``d`` of
    ``d(p) = (u_mf(p) - u_fm(p + d(p))) / 2``, found by fixed-point iteration from ``d = (u_mf - u_fm) / 2``.

    ``u_mf`` (``forward_ddf``) maps the fixed grid into the moving image and ``u_fm`` (``backward_ddf``) the
    reverse. For exact inverses, ``u_fm(p + u_mf(p)) = -u_mf(p)``, so ``d = u_mf`` solves the equation; when the
    two fields are equal (an image registered to itself, where any bias of the network is the same both ways),
    ``d = 0`` solves it and the iteration starts there, so the result is 0 up to rounding. The iteration converges
    where ``u_fm`` changes by less than 2 voxels per voxel (smooth fields). On the 16 held-out benchmark pairs with
    the shipped model, 3, 5, 10 and 20 steps give the same mean Dice to 1e-4 and SD of the log Jacobian to 3e-4
    (1 step: Dice 0.0014 lower); the default 5 leaves a margin for larger deformations at half the cost of 10.
    A single step from ``u_mf`` instead of the midpoint (0.3.0's formula) leaves an image registered to itself
    moving by up to 0.76 voxel with the shipped model.

    Args:
        forward_ddf, backward_ddf: (B, spatial_dims, *S) displacements in voxels.
        iterations: fixed-point steps (each one warp of the backward field), >= 1.

    Returns:
        (B, spatial_dims, *S) displacement in voxels, moving -> fixed like ``forward_ddf``.
    """
    if int(iterations) < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}.")
    ddf = 0.5 * (forward_ddf - backward_ddf)
    for _ in range(int(iterations)):
        ddf = 0.5 * (forward_ddf - warp_with_ddf(backward_ddf, ddf, padding_mode="border"))
    return ddf


def _foreground_profiles(inputs: torch.Tensor) -> list[torch.Tensor]:
    """
    For each spatial axis of (B, C, *S) images, a (S_axis,) bool: whether the slice at that position holds a voxel
    brighter than the minimum of its image (sample and channel) in any sample or channel. From maxima over the other
    axes: three reductions that run along memory (the minimum, the maxima over all but the first axis, the maxima
    over the first axis), each a fraction of a millisecond for a 80x96x80 pair, instead of a foreground mask and a
    reduction of it per axis (or ``aminmax`` along the short last axis, several times slower).
    """
    spatial_dims = inputs.ndim - 2

    def amax(values: torch.Tensor, dims: list[int]) -> torch.Tensor:
        return values.amax(dims) if dims else values  # amax over no dimension would reduce over all of them

    minimum = inputs.flatten(2).amin(2)  # (B, C)
    lines = [inputs.flatten(3).amax(3) if spatial_dims > 1 else inputs]  # (B, C, S[0])
    if spatial_dims > 1:
        rest = inputs.amax(2)  # (B, C, *S[1:])
        lines += [amax(rest, [d for d in range(2, rest.ndim) if d != axis]) for axis in range(2, rest.ndim)]
    return [(line > minimum.unsqueeze(-1)).flatten(0, 1).any(0) for line in lines]


def foreground_box(inputs: torch.Tensor, margin: int = 0, k: int = 16) -> tuple[slice, ...]:
    """
    The box of the batch's foreground for registration: the smallest box that holds every foreground voxel of
    every sample and channel plus ``margin`` voxels on each side, each size rounded up to a multiple of ``k``
    (the network's size divisor), centred on the foreground and moved back inside the image where it would
    cross a border. A voxel is foreground when it is brighter than the minimum of its image (sample and
    channel): the background of skull-stripped or windowed images normalised to [0, 1] is that minimum, 0, while
    an image with noise everywhere has no background, and gives the whole grid.

    Args:
        inputs: (B, C, *S) images, e.g. ``cat([moving, fixed], dim=1)``.
        margin: voxels of background kept around the foreground before rounding (>= 0).
        k: each size of the box is a multiple of ``k``, or the whole axis.

    Returns:
        one ``slice`` per spatial axis; ``slice(0, n)`` for an axis the box spans whole (also when nothing is
        foreground).
    """
    if int(margin) < 0 or int(k) < 1:
        raise ValueError(f"margin must be >= 0 and k >= 1, got margin={margin}, k={k}.")
    spatial = tuple(inputs.shape[2:])
    lows, highs = [], []
    for axis, profile in enumerate(_foreground_profiles(inputs.detach())):
        index = torch.nonzero(profile).flatten().tolist()
        if not index:
            return tuple(slice(0, n) for n in spatial)
        lows.append(max(index[0] - int(margin), 0))
        highs.append(min(index[-1] + 1 + int(margin), spatial[axis]))
    sizes = compute_divisible_spatial_size([high - low for low, high in zip(lows, highs)], int(k))
    box = []
    for low, high, size, n in zip(lows, highs, sizes, spatial):
        size = min(int(size), n)
        start = min(max(low - (size - (high - low)) // 2, 0), n - size)
        box.append(slice(start, start + size))
    return tuple(box)


class PairInferer(Inferer):
    """
    Register pairs with a network that maps a pair to a displacement field, and warp the moving image once:
    ``ddf = network(pair)``, optionally ``ddf = refine(moving, fixed, ddf)`` (instance optimisation), then
    ``warped_image = warp_with_ddf(moving, ddf)``, where ``pair = cat([moving, fixed], dim=1)`` of shape
    (B, 2C, *S) is what :py:class:`monai_sacb.engines.PreparePairBatch` gives the engines.

    The network is the bundle's ``network_def``: a backbone such as
    :py:class:`monai_sacb.networks.SACBNetBackbone`, or any two-input network wrapped in
    :py:class:`monai_sacb.networks.PairDDFWrapper`. It may be wrapped in ``DistributedDataParallel``: it is
    called, never unwrapped.

    With ``symmetric=True`` the network also registers the pair the other way round and the two fields are
    averaged as inverses of each other (:py:func:`symmetric_ddf`). Measured on held-out pairs with a network
    trained on synthesised pairs (docs/accuracy.md): higher Dice, about half the SD of the log Jacobian, for a
    second pass through the network's decoder. Both directions come from ``network.forward_both_ways(inputs)``
    where the network has that method (:py:class:`~monai_sacb.networks.SACBNetBackbone`: one encoder pass for
    both), otherwise from ``network`` on one batch of 2B.

    Args:
        padding_mode: padding of the warp of the moving image ("border", like ``SACBNet``'s default).
        refine: optional callable ``refine(moving, fixed, ddf) -> ddf``, e.g.
            :py:class:`monai_sacb.inferers.InstanceOptimization`, applied to the network's field.
        symmetric: register both ways and average (see above).
        cpu_bfloat16: on CPU, run the network under ``torch.autocast("cpu", dtype=torch.bfloat16)``; the
            refinement, the averaging and the warps stay float32, and the ddf is float32. About 1.3x faster on
            CPUs with AMX (Intel Xeon Sapphire Rapids and later) with the same held-out Dice to 1e-3
            (docs/accuracy.md), slower on CPUs without: :py:func:`monai_sacb.networks.cpu_bfloat16_is_fast` tells
            which. No effect on GPU inputs (use the engine's ``amp`` there).
        crop_foreground: register the pair inside the box of its foreground (:py:func:`foreground_box`, with
            ``crop_margin``) and extend the field outside the box by its values on the box's faces (replicate
            padding). SACB-Net's instance norms and k-means see the whole volume, so a network trained on tightly
            cropped images registers worse when the images carry more background: on held-out pairs padded from
            80x96x80 to 112x128x112 with background, the 0.6.0 weights' Dice (one pass) fell from 0.622 to 0.564
            and SDlogJ rose from 0.30 to 0.54; cropped, the network sees what it was trained on and runs on fewer
            voxels (docs/accuracy.md, "Field of view"). The moving image is warped on the whole grid.
        crop_margin: voxels of background kept around the foreground before the box is rounded up to multiples
            of 16 (which adds 0-15 voxels per axis). 0 by default: the training images of the shipped model have
            their brain within 1-4 voxels of the border and no exact background.

    Returns:
        ``{"warped_image": (B, C, *S), "ddf": (B, spatial_dims, *S)}``, the ddf in voxels of S (channel i along
        spatial axis i, ``warped_image(p) = moving(p + ddf(p))``). Named outputs, so that
        ``monai.transforms.FlattenSubKeysd(keys="pred")`` puts them beside the batch in an engine's
        postprocessing; :py:class:`monai_sacb.losses.RegistrationLoss` takes the dictionary as it is.
    """

    def __init__(
        self,
        padding_mode: str = "border",
        refine: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        symmetric: bool = False,
        cpu_bfloat16: bool = False,
        crop_foreground: bool = False,
        crop_margin: int = 0,
    ) -> None:
        super().__init__()
        if refine is not None and not callable(refine):
            raise ValueError(f"refine must be callable as refine(moving, fixed, ddf), got {type(refine).__name__}.")
        if int(crop_margin) != crop_margin or crop_margin < 0:
            raise ValueError(f"crop_margin must be a whole number of voxels >= 0, got {crop_margin}.")
        self.padding_mode = padding_mode
        self.refine = refine
        self.symmetric = bool(symmetric)
        self.cpu_bfloat16 = bool(cpu_bfloat16)
        self.crop_foreground = bool(crop_foreground)
        self.crop_margin = int(crop_margin)

    def describe(self, name: str = "SACB-Net") -> str:
        """
        The method as a report names it, e.g. ``"SACB-Net, symmetric, instance optimisation [0, 50, 10] steps"``:
        ``name``, then what this inferer adds (``cpu_bfloat16``, ``crop_foreground``, ``refine``'s ``steps`` when it
        has them and any is non-zero).
        """
        parts = [name] + (["symmetric"] if self.symmetric else []) + (["bfloat16 on CPU"] if self.cpu_bfloat16 else [])
        parts += ["cropped to the foreground"] if self.crop_foreground else []
        steps = getattr(self.refine, "steps", None)
        if steps is not None and any(int(n) for n in steps):
            parts.append(f"instance optimisation {[int(n) for n in steps]} steps")
        elif self.refine is not None and steps is None:
            parts.append(f"refined by {type(self.refine).__name__}")
        return ", ".join(parts)

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            inputs: (B, 2C, *S) ``cat([moving, fixed], dim=1)``.
            network: ``network(pair) -> ddf``.
            args, kwargs: passed on to the network.
        """
        if inputs.ndim < 3 or inputs.shape[1] % 2:
            raise ValueError(
                "PairInferer expects cat([moving, fixed], dim=1) of shape (B, 2C, *spatial) with an even number "
                f"of channels, got {tuple(inputs.shape)}."
            )
        channels = inputs.shape[1] // 2
        moving = inputs[:, :channels]
        box = foreground_box(inputs, self.crop_margin) if self.crop_foreground else None
        if box is None or all(b.stop - b.start == n for b, n in zip(box, inputs.shape[2:])):
            ddf = self._register(inputs, network, *args, **kwargs)
        else:
            ddf = self._register(inputs[(slice(None), slice(None), *box)], network, *args, **kwargs)
            pads = [p for b, n in reversed(list(zip(box, inputs.shape[2:]))) for p in (b.start, n - b.stop)]
            ddf = F.pad(ddf, pads, mode="replicate")
        warped = warp_with_ddf(moving.to(ddf.dtype), ddf, padding_mode=self.padding_mode)
        return {"warped_image": warped, "ddf": ddf}

    def _register(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The ddf of ``inputs``: the network's, both ways averaged if symmetric, then refined."""
        channels = inputs.shape[1] // 2
        moving, fixed = inputs[:, :channels], inputs[:, channels:]
        bfloat16 = self.cpu_bfloat16 and inputs.device.type == "cpu"
        # only entered when asked for: an autocast the caller (or an engine's amp) has set stays in force otherwise
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if bfloat16 else contextlib.nullcontext()
        with precision:
            if not self.symmetric:
                fields = (network(inputs, *args, **kwargs),)
            elif callable(getattr(network, "forward_both_ways", None)):
                fields = tuple(network.forward_both_ways(inputs, *args, **kwargs))
            else:
                both = network(torch.cat([inputs, torch.cat([fixed, moving], dim=1)], dim=0), *args, **kwargs)
                fields = (both[: inputs.shape[0]], both[inputs.shape[0] :])
        if bfloat16:  # a network without float32 outputs of its own under autocast
            fields = tuple(field.to(torch.promote_types(field.dtype, torch.float32)) for field in fields)
        ddf = symmetric_ddf(*fields) if self.symmetric else fields[0]
        if self.refine is not None:
            ddf = self.refine(moving, fixed, ddf).to(ddf.dtype)
        return ddf
