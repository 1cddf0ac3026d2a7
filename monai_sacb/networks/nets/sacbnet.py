# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from monai_sacb.networks.blocks.conv import SameConv2d, SameConv3d, same_conv
from monai_sacb.networks.blocks.encoder import PyramidEncoder, conv_norm_act
from monai_sacb.networks.blocks.matching import similarity_matching_flow
from monai_sacb.networks.blocks.pair_stacking import (
    stack_pair,
    stacked_conv_norm_act,
    use_stacked_pair,
)
from monai_sacb.networks.blocks.sac import SACBlock
from monai_sacb.networks.blocks.warp import linear_resize, warp_with_ddf
from monai_sacb.networks.utils import (
    channels_last_format,
    compiled_cpu_kernels,
    deterministic_backward_needed,
    is_exporting,
    use_cpu_kernels,
)

__all__ = ["SACBNetBackbone", "SACBNet"]

NUM_LEVELS = 5
SIZE_DIVISOR = 2 ** (NUM_LEVELS - 1)


def _bfloat16_inference_kernels(flow: torch.Tensor):
    """
    The compiled kernels for a float32 3D flow of inference under CPU bfloat16 autocast, or None: kernels whose
    float32 results match PyTorch's only where its compiled code fuses the same multiply-adds are kept to bfloat16
    inference, so that float32 results never depend on whether numba is installed.
    """
    if flow.ndim != 5 or flow.dtype != torch.float32:
        return None
    if not (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        return None
    return compiled_cpu_kernels(flow)


class SACBNetBackbone(nn.Module):
    """
    SACB-Net: spatial-awareness convolutions for deformable image registration, as described in
    Cheng et al., "SACB-Net: Spatial-awareness Convolutions for Medical Image Registration", CVPR 2025
    (arXiv 2503.19592). This is the network itself: ``forward(pair) -> ddf``, with
    ``pair = torch.cat([moving, fixed], dim=1)``, the form that :py:class:`SACBNet` wraps (as
    :py:class:`monai.networks.nets.VoxelMorph` wraps :py:class:`monai.networks.nets.VoxelMorphUNet`) and that
    bundles (``verify_net_in_out``), ``torch.jit.trace`` and ONNX export use. It does not warp the moving image.

    A shared five-level encoder extracts features of the moving and the fixed image. From the coarsest level
    to level 2, a :py:class:`SACBlock` refines both feature maps (kernels adapted to k-means clusters of local
    context), a parameter-free similarity matching over a 3x3(x3) window estimates an increment, and increments
    are composed and upsampled. At full resolution a small convolutional head predicts the last increment.

    Beyond the published code: 2D as well as 3D, any batch size, any input size divisible by 16, CPU or CUDA,
    ``torch.autocast`` (k-means and matching run in float32), and a deterministic k-means (seeded k-means++ and
    a fixed number of iterations), so the same input and weights give the same output on every call. Under CPU
    bfloat16 autocast on a CPU with AMX, inference runs the full-resolution layers on the pair stacked along
    channels (:py:mod:`~monai_sacb.networks.blocks.pair_stacking`: the same function, in less time).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: channels of the concatenated pair, moving channels first then fixed (like the
            ``in_channels`` of :py:class:`monai.networks.nets.VoxelMorphUNet`); even, 2 for one-channel images.
        base_channels: c, the width of the first convolution; level widths are (2c, 4c, 8c, 16c, 16c).
        num_clusters: k-means clusters in each SAC block (the paper uses 7).
        kmeans_iters: Lloyd iterations per k-means call.
        kmeans_seed: seed of the k-means++ initialisation draws.
        kmeans_max_points: k-means fits its centroids on an evenly spread subset of at most this many voxels
            and then assigns every voxel (``None``: fit on all voxels, like the published code; slower).
        allow_nonfinite: accept inputs holding NaN or infinite values. Off by default: a single NaN voxel spreads
            through the k-means and the convolutions into an all-NaN ddf, so ``forward`` raises a ``ValueError``
            that counts the bad values instead. Set True only when the caller handles non-finite outputs itself
            (the check is skipped while tracing/exporting).
        subtract_self_estimate: an extension, not in the paper (no parameters; the same state dict): every
            increment, from each level's similarity matching and from the head, has subtracted from it what the
            same layer estimates for the fixed features paired with themselves. The plain matching scores
            neighbours by an unnormalised dot product, so an image registered to itself moves by up to about
            2 voxels (the bias of the best-scoring neighbour, composed over levels); with the subtraction it stays
            in place (zero up to rounding), at about 10% more time per pass. The head's last bias then cancels
            (it has no effect and gets no gradient). The bundle uses it (docs/accuracy.md).

    Attributes:
        self_estimate_weight: in training mode, the weight of the subtracted self-estimates (default 1.0: the
            whole of them). Training from scratch learns faster when the subtraction is ramped in from 0 over the
            first iterations (:py:class:`monai_sacb.handlers.SelfEstimateWarmup` sets it; measured on the bundle's
            main job in bundle/docs/README.md). In eval mode the network always subtracts the whole
            self-estimates, so validation and inference see the network that is shipped.

    Inputs are checked on every call: the shape (see ``forward``), a batch of at least one pair, finite values
    (unless ``allow_nonfinite``), and dtype: integer, boolean and floating inputs of another precision are
    converted to the dtype of the network's weights (to float32 under ``torch.autocast``), so a float64 or int16
    pair works with a float32 network; complex inputs are refused.

    Example::

        net = SACBNetBackbone(spatial_dims=3, in_channels=2)  # 1,105,591 trainable parameters
        net.load_state_dict(torch.load("bundle/models/model.pt"))  # the bundle's checkpoint: a plain state dict
        moving = torch.randn(1, 1, 160, 192, 224)
        fixed = torch.randn(1, 1, 160, 192, 224)
        ddf = net(torch.cat([moving, fixed], dim=1))  # (1, 3, 160, 192, 224), in voxels

    ``ddf`` follows :py:class:`monai.networks.blocks.Warp`: channel i is the displacement along spatial axis i
    in voxels, and the moving image registered to the fixed one is ``moving(p + ddf(p))``, e.g.
    ``warp_with_ddf(moving, ddf)`` or ``Warp()(moving, ddf)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        base_channels: int = 4,
        num_clusters: int = 7,
        kmeans_iters: int = 10,
        kmeans_seed: int = 0,
        kmeans_max_points: int | None = 16384,
        allow_nonfinite: bool = False,
        subtract_self_estimate: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 2 or in_channels % 2:
            raise ValueError(
                f"in_channels counts the channels of cat([moving, fixed], dim=1), so it must be even and at least 2 "
                f"(2 for one-channel images), got {in_channels}."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        c = base_channels
        widths = (2 * c, 4 * c, 8 * c, 16 * c, 16 * c)
        self.encoder = PyramidEncoder(spatial_dims, in_channels // 2, widths, first_channels=c)
        self.sac_blocks = nn.ModuleList(
            SACBlock(spatial_dims, width, num_clusters, kmeans_iters, kmeans_seed, kmeans_max_points) for width in widths[1:]
        )  # levels 2..5
        self.refine = nn.Sequential(
            conv_norm_act(spatial_dims, widths[0], widths[0]), conv_norm_act(spatial_dims, widths[0], widths[0])
        )
        conv = SameConv3d if spatial_dims == 3 else SameConv2d
        self.head = nn.Sequential(
            conv_norm_act(spatial_dims, 2 * widths[0], widths[0]),
            conv_norm_act(spatial_dims, widths[0], widths[0]),
            conv(widths[0], spatial_dims),
        )
        for name, value in (("allow_nonfinite", allow_nonfinite), ("subtract_self_estimate", subtract_self_estimate)):
            if not isinstance(value, bool):  # a config's "false" read as a string would otherwise count as True
                raise ValueError(
                    f"SACBNetBackbone({name}=...) takes True or False, got {value!r} of type {type(value).__name__} "
                    f"(on the command line write --network_def#{name} False, with a capital F)."
                )
        self.allow_nonfinite = allow_nonfinite
        self.subtract_self_estimate = subtract_self_estimate
        self.self_estimate_weight = 1.0
        # channels-last kernels are markedly faster for these narrow convolutions; a channels-last weight makes
        # every convolution keep that layout, even after a one-channel input
        self.to(memory_format=self._memory_format)

    @property
    def _memory_format(self) -> torch.memory_format:
        return channels_last_format(self.spatial_dims)

    def _check_input(self, pair: torch.Tensor) -> None:
        expected = f"(B, {self.in_channels}, " + ", ".join("HWD"[: self.spatial_dims]) + ")"
        if pair.ndim != self.spatial_dims + 2 or pair.shape[1] != self.in_channels:
            raise ValueError(
                f"SACBNetBackbone(spatial_dims={self.spatial_dims}, in_channels={self.in_channels}) expects one tensor "
                f"of shape {expected}, cat([moving, fixed], dim=1) (moving channels first, then fixed), got "
                f"{tuple(pair.shape)}."
            )
        if pair.shape[0] == 0:
            raise ValueError(
                f"SACBNet got an empty batch (shape {tuple(pair.shape)}): pass at least one pair (an empty batch "
                "usually comes from an empty dataset or a sampler that gave this process no items)."
            )
        bad = [s for s in pair.shape[2:] if s % SIZE_DIVISOR]
        if bad:
            raise ValueError(
                f"SACBNet needs spatial sizes divisible by {SIZE_DIVISOR} (four 2x poolings), got "
                f"{tuple(pair.shape[2:])}: pad or crop the images, e.g. monai.transforms.DivisiblePad(k={SIZE_DIVISOR})."
            )
        if pair.is_complex():
            raise ValueError(
                f"SACBNet takes real-valued images, got a pair of dtype {pair.dtype}: pass the magnitude "
                "(image.abs()) or the real part."
            )

    def _prepare_input(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked (moving, fixed) halves of the pair in the dtype the layers take (see the class docstring)."""
        self._check_input(pair)
        if torch.is_autocast_enabled(pair.device.type):
            dtype = torch.float32  # autocast casts for each layer; k-means and matching run in float32
        else:
            dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)
        channels = self.in_channels // 2
        moving, fixed = pair[:, :channels].to(dtype), pair[:, channels:].to(dtype)
        if not self.allow_nonfinite and not is_exporting():
            for name, image in (("moving", moving), ("fixed", fixed)):
                # a NaN or infinite value makes the sum NaN or infinite: one reduction usually settles it
                if bool(torch.isfinite(image.sum())) or bool(torch.isfinite(image).all()):
                    continue
                bad, nan = int((~torch.isfinite(image)).sum()), int(torch.isnan(image).sum())
                raise ValueError(
                    f"{name} holds {bad} non-finite values ({nan} NaN, {bad - nan} infinite, counted in {dtype}): one "
                    "is enough to make the whole ddf NaN. Replace them (e.g. torch.nan_to_num) or fix the source "
                    "image; SACBNet(allow_nonfinite=True) skips this check."
                )
        return moving, fixed

    def _upsample(self, flow: torch.Tensor) -> torch.Tensor:
        """Flow on one level -> flow on the next finer level (x2 in size and in voxel units)."""
        if deterministic_backward_needed(flow):
            return linear_resize(2 * flow, [2 * size for size in flow.shape[2:]])
        kernels = _bfloat16_inference_kernels(flow)
        if kernels is not None:  # the same values on the CPUs seen, in about half the time
            from monai_sacb.networks.blocks.numba_kernels import float32_upsample_twice

            return float32_upsample_twice(flow, 2.0, kernels)
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        return F.interpolate(2 * flow, scale_factor=2, mode=mode, align_corners=True)

    def _with_warped_moving(self, features: torch.Tensor, flow: torch.Tensor, batch: int) -> torch.Tensor:
        """[fixed; moving] features (2B, C, *S) -> [fixed; moving warped by flow], channels-last like the input."""
        fixed_features, moving_features = features[:batch], features[batch:]
        if torch.is_grad_enabled() or not use_cpu_kernels(features):
            warped = warp_with_ddf(moving_features, flow)  # zero padding, as in the paper
            # grid_sample returns a contiguous tensor; the convolutions that follow are faster on channels-last input
            return torch.cat([fixed_features, warped.contiguous(memory_format=self._memory_format)], dim=0)
        # CPU inference: nothing else reads the encoder's moving features, so overwrite them instead of allocating
        # a concatenation (fresh memory is what costs most on CPU)
        warp_with_ddf(moving_features, flow, out=moving_features)
        return features

    def _head(self, features: torch.Tensor, batch: int) -> torch.Tensor:
        """The head's increment from the refined full-resolution features of the batch [fixed; moving]."""
        fixed, moving = features[:batch], features[batch:]
        if not self.subtract_self_estimate:
            return self.head(torch.cat([fixed, moving], dim=1))
        # head(cat([fixed, fixed])) begins with a convolution that reads fixed twice: one convolution of fixed
        # with the two halves of its weight summed; the rest runs as one batch (norms are per sample)
        first = self.head[0]
        weight = first.conv.weight
        half = weight.shape[1] // 2
        folded = (weight[:, :half] + weight[:, half:]).contiguous(memory_format=self._memory_format)
        x = torch.cat([first.conv(torch.cat([fixed, moving], dim=1)), same_conv(fixed, folded, first.conv.bias)])
        both = self.head[1:](first.adn(x))
        return both[:batch] - self._weighted_self_estimate(both[batch:])

    def _stacked_with_warped_moving(self, pair: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Stacked features [fixed | moving] -> [fixed | moving warped by flow], overwriting the moving half."""
        moving = pair[:, pair.shape[1] // 2 :]
        warp_with_ddf(moving, flow, out=moving)
        return pair

    def _stacked_head(self, pair: torch.Tensor) -> torch.Tensor:
        """
        The head's increment from the stacked refined features [fixed | moving] (B, 2c, *S), as three convolutions of
        the pair instead of two batches. With the self-estimate subtracted, the first convolution's 2c output
        channels are the head's on [fixed | moving] and on [fixed | fixed] (the weight's halves summed, acting on
        fixed alone), the second is block-diagonal, and the last computes ``head(moving) - head(self)`` at once:
        the convolution is linear, so its weight on the pair is ``[w, -w]`` and the biases cancel (one bfloat16
        rounding of the difference instead of two of the terms).
        """
        if not self.subtract_self_estimate:
            return self.head(pair)  # the stacked pair is the head's input, cat([fixed, moving], dim=1)
        first, second, last = self.head
        width = pair.shape[1] // 2
        weight, bias = first.conv.weight, first.conv.bias
        folded = weight[:, :width] + weight[:, width:]
        weight = torch.cat([weight, torch.cat([folded, torch.zeros_like(folded)], dim=1)])
        x = first.adn(same_conv(pair, weight.contiguous(memory_format=self._memory_format), torch.cat([bias, bias])))
        x = stacked_conv_norm_act(second, x)
        share = self._self_estimate_weight_now()
        weight = torch.cat([last.weight, -share * last.weight], dim=1).contiguous(memory_format=self._memory_format)
        return same_conv(x, weight, (1.0 - share) * last.bias)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pair: (B, in_channels, *S) ``torch.cat([moving, fixed], dim=1)``, moving channels first; S divisible
                by 16.

        Returns:
            ddf, (B, spatial_dims, *S) in voxels, such that ``moving(p + ddf(p))`` matches ``fixed(p)``; in the
            dtype of the weights, at least float32 (float32 under autocast).

        Raises:
            ValueError: wrong number of dimensions or channels, an empty batch, sizes not divisible by 16, complex
                values, or NaN/infinite values (unless ``allow_nonfinite``); the message says how to fix the input.
        """
        moving, fixed = self._prepare_input(pair)
        return self._decode(self._encode(moving, fixed), fixed.shape[0])

    def forward_both_ways(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Register the pair both ways: ``(forward(pair), forward(cat([fixed, moving], dim=1)))``, with the shared
        encoder run once for both images instead of twice (the two directions encode the same two images). What
        :py:class:`monai_sacb.inferers.PairInferer` calls for ``symmetric=True``; about 15% less time than
        ``forward`` on the batch of both directions on a 2-core CPU (docs/benchmarks.md, "Registering a pair on the
        CPU").

        Args:
            pair: (B, in_channels, *S) ``torch.cat([moving, fixed], dim=1)``, as for ``forward``.

        Returns:
            ``(ddf_moving_to_fixed, ddf_fixed_to_moving)``, each (B, spatial_dims, *S) in voxels: the first warps
            the moving image onto the fixed one, the second the fixed image onto the moving one.
        """
        moving, fixed = self._prepare_input(pair)
        batch = fixed.shape[0]
        pyramid = self._encode(moving, fixed)
        # fresh [moving; fixed] tensors: decoding may overwrite the moving half of the pyramid it is given
        swapped = [torch.cat([features[batch:], features[:batch]], dim=0) for features in pyramid[1:]]
        if pyramid[0].shape[0] == batch:  # the full-resolution level of a stacked pair, [fixed | moving]
            half = pyramid[0].shape[1] // 2
            swapped.insert(0, stack_pair(pyramid[0][:, half:], pyramid[0][:, :half]))
        else:
            swapped.insert(0, torch.cat([pyramid[0][batch:], pyramid[0][:batch]], dim=0))
        backward = self._decode(swapped, batch)
        return self._decode(pyramid, batch), backward

    def _encode(self, moving: torch.Tensor, fixed: torch.Tensor) -> list[torch.Tensor]:
        """
        Feature pyramid, finest first, of the batch [fixed; moving] (2B samples); in bfloat16 CPU inference
        (:py:func:`~monai_sacb.networks.blocks.pair_stacking.use_stacked_pair`) the full-resolution level is the
        stacked pair [fixed | moving] instead, (B, 2 * 2c, *S).
        """
        if use_stacked_pair(fixed):
            return self.encoder.forward_stacked_pair(stack_pair(fixed, moving))
        # moving and fixed share every layer; one batch of 2B runs each layer once
        return self.encoder(torch.cat([fixed, moving], dim=0).contiguous(memory_format=self._memory_format))

    def _match(self, features: torch.Tensor, batch: int) -> torch.Tensor:
        """Matching increment (B, spatial_dims, *S) of [fixed; moving] features (2B, C, *S)."""
        fixed, moving = features[:batch], features[batch:]
        if not self.subtract_self_estimate:
            return similarity_matching_flow(moving, fixed)
        if self._self_estimate_weight_now() == 1.0:  # the whole self-estimate: one call computes both matchings
            return similarity_matching_flow(moving, fixed, subtract_self_match=True)
        self_estimate = similarity_matching_flow(fixed, fixed)
        return similarity_matching_flow(moving, fixed) - self._weighted_self_estimate(self_estimate)

    def _weighted_self_estimate(self, estimate: torch.Tensor) -> torch.Tensor:
        """A self-estimate times ``self_estimate_weight`` in training mode; as it is in eval mode."""
        weight = self._self_estimate_weight_now()
        return estimate if weight == 1.0 else estimate * weight

    def _self_estimate_weight_now(self) -> float:
        return float(self.self_estimate_weight) if self.training else 1.0

    def _decode(self, pyramid: list[torch.Tensor], batch: int) -> torch.Tensor:
        """
        Coarse-to-fine ddf from a [fixed; moving] pyramid, whose finest level may be a stacked pair [fixed | moving]
        (see _encode). May overwrite the moving half (see _with_warped_moving).
        """
        flow = None
        for level in range(NUM_LEVELS - 1, 0, -1):  # 0-based levels 4..1, i.e. the paper's levels 5..2
            features = pyramid[level]
            if flow is not None:
                features = self._with_warped_moving(features, flow, batch)
            features = self.sac_blocks[level - 1](features)
            increment = self._match(features, batch)
            # composition: flow_new(p) = increment(p) + flow(p + increment(p))
            flow = increment if flow is None else warp_with_ddf(flow, increment).add_(increment)
            flow = self._upsample(flow)

        if pyramid[0].shape[0] == batch:  # a stacked pair, [fixed | moving] (see _encode)
            features = self._stacked_with_warped_moving(pyramid[0], flow)
            for layer in self.refine:
                features = stacked_conv_norm_act(layer, features)
            increment = self._stacked_head(features)
        else:
            increment = self._head(self.refine(self._with_warped_moving(pyramid[0], flow, batch)), batch)
        increment = increment.to(torch.promote_types(increment.dtype, torch.float32))
        return warp_with_ddf(flow, increment).add_(increment)


class SACBNet(nn.Module):
    """
    SACB-Net registration of a moving onto a fixed image: ``forward(moving, fixed) -> (warped, ddf)``, like
    :py:class:`monai.networks.nets.VoxelMorph`. The pair is concatenated along channels and passed to the
    backbone (by default a :py:class:`SACBNetBackbone`, which holds every layer), whose ddf then warps the
    moving image: ``warped = warp_with_ddf(moving, ddf, padding_mode=warp_padding_mode)``.

    Args:
        backbone: a network mapping ``cat([moving, fixed], dim=1)`` to a (B, spatial_dims, *S) ddf in voxels;
            ``None`` builds ``SACBNetBackbone(spatial_dims, 2 * in_channels, base_channels, ...)`` from the
            arguments below. When a backbone is given, the arguments that build it (all but ``warp_padding_mode``)
            are ignored; the input checks then use the backbone's own ``spatial_dims`` and ``in_channels`` where
            it has them.
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: channels of each of the moving and fixed images (the backbone gets twice as many).
        base_channels, num_clusters, kmeans_iters, kmeans_seed, kmeans_max_points, allow_nonfinite: see
            :py:class:`SACBNetBackbone`.
        warp_padding_mode: padding of the warp of the moving image ("border", like ``Warp()``, or "zeros",
            like the published code). Feature and flow warps inside the network always use zero padding.
        subtract_self_estimate: see :py:class:`SACBNetBackbone` (the bundle's network uses it).

    The state-dict keys are the backbone's under ``backbone.``. A bundle checkpoint (``bundle/models/model.pt``,
    the state dict of a :py:class:`SACBNetBackbone`) loads with ``net.backbone.load_state_dict(state_dict)``;
    build the network as the bundle does, ``SACBNet(subtract_self_estimate=True)``, to get its results.

    Example::

        net = SACBNet(spatial_dims=3)  # 1,105,591 trainable parameters
        moving = torch.randn(1, 1, 160, 192, 224)
        fixed = torch.randn(1, 1, 160, 192, 224)
        warped, ddf = net(moving, fixed)  # ddf: (1, 3, 160, 192, 224), in voxels

    ``ddf`` follows :py:class:`monai.networks.blocks.Warp`: channel i is the displacement along spatial axis i
    in voxels, and ``warped(p) = moving(p + ddf(p))``, so ``warped == Warp(padding_mode=warp_padding_mode)(moving, ddf)``.
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        spatial_dims: int = 3,
        in_channels: int = 1,
        base_channels: int = 4,
        num_clusters: int = 7,
        kmeans_iters: int = 10,
        kmeans_seed: int = 0,
        kmeans_max_points: int | None = 16384,
        allow_nonfinite: bool = False,
        warp_padding_mode: str = "border",
        subtract_self_estimate: bool = False,
    ) -> None:
        super().__init__()
        if backbone is None:
            backbone = SACBNetBackbone(
                spatial_dims,
                2 * in_channels,
                base_channels,
                num_clusters,
                kmeans_iters,
                kmeans_seed,
                kmeans_max_points,
                allow_nonfinite,
                subtract_self_estimate,
            )
        self.backbone = backbone
        self.spatial_dims: int | None = getattr(backbone, "spatial_dims", None)
        backbone_channels = getattr(backbone, "in_channels", None)
        self.in_channels: int | None = None if backbone_channels is None else backbone_channels // 2
        self.warp_padding_mode = warp_padding_mode

    def _check_inputs(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        if self.spatial_dims is not None and self.in_channels is not None:
            expected = f"(B, {self.in_channels}, " + ", ".join("HWD"[: self.spatial_dims]) + ")"
            for name, image in (("moving", moving), ("fixed", fixed)):
                if image.ndim != self.spatial_dims + 2 or image.shape[1] != self.in_channels:
                    raise ValueError(
                        f"SACBNet(spatial_dims={self.spatial_dims}, in_channels={self.in_channels}) expects {name} of "
                        f"shape {expected}, got {tuple(image.shape)}."
                    )
        if moving.shape != fixed.shape:
            raise ValueError(
                f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same shape: resample "
                "the pair onto one grid first (e.g. monai.transforms.Spacingd / ResampleToMatchd)."
            )

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            moving: (B, in_channels, *S) image to be warped; S divisible by 16.
            fixed: (B, in_channels, *S) target image.

        Returns:
            ``(warped, ddf)``: the moving image warped onto the fixed image, (B, in_channels, *S), and the dense
            displacement field in voxels, (B, spatial_dims, *S), both in the dtype of the ddf (the weights'
            dtype; float32 under autocast).

        Raises:
            ValueError: wrong number of dimensions or channels, moving and fixed of different shapes, and
                whatever the backbone refuses (see :py:class:`SACBNetBackbone`); the message says how to fix
                the input.
        """
        self._check_inputs(moving, fixed)
        if moving.dtype != fixed.dtype:  # one dtype that holds both exactly, so that the concatenation is lossless
            dtype = torch.promote_types(torch.promote_types(moving.dtype, fixed.dtype), torch.float32)
            moving, fixed = moving.to(dtype), fixed.to(dtype)
        ddf = self.backbone(torch.cat([moving, fixed], dim=1))
        expected = (moving.shape[0], moving.ndim - 2, *moving.shape[2:])
        if tuple(ddf.shape) != expected:
            raise ValueError(f"the backbone must return a ddf of shape {expected}, got {tuple(ddf.shape)}.")
        warped = warp_with_ddf(moving.to(ddf.dtype), ddf, padding_mode=self.warp_padding_mode)
        return warped, ddf
