# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch
from torch import nn

from monai_sacb.networks.blocks.warp import warp_with_ddf

__all__ = ["WarpedLabelDiceLoss"]


class WarpedLabelDiceLoss(nn.Module):
    """
    Soft Dice loss between a moving label map warped by a displacement field and the fixed label map, the label
    loss of SynthMorph (Hoffmann et al., IEEE TMI 2022): the moving labels are one-hot encoded, warped with linear
    interpolation (so the loss is differentiable in the field) and compared with the fixed one-hot labels::

        loss = 1 - mean over (sample, label) of 2 |warped_k * fixed_k| / (|warped_k| + |fixed_k|)

    over the foreground labels (values other than 0) present in either label map of the sample; a label absent
    from both sides of a sample does not count. Minimum 0 for a perfect overlap. Unlike an image similarity it does
    not depend on contrast, and it pulls every labelled boundary, including those between structures of equal
    intensity.

    Label maps with many labels (a parcellation has hundreds) would need as many warped channels; each call then
    scores a random subset of ``max_labels`` of the labels present (drawn with torch's global generator, so
    ``monai.utils.set_determinism`` makes it reproducible), an unbiased estimate of the mean over all labels.

    Args:
        max_labels: the most labels scored per call (memory and time grow linearly with it); None: all.
        smooth: added to numerator and denominator of each Dice (keeps empty overlaps finite).
        padding_mode: ``grid_sample`` padding of the warped one-hot maps ("zeros": outside is background).
    """

    def __init__(self, max_labels: int | None = 32, smooth: float = 1e-5, padding_mode: str = "zeros") -> None:
        super().__init__()
        if max_labels is not None and int(max_labels) < 1:
            raise ValueError(f"max_labels must be a positive number or None, got {max_labels}.")
        self.max_labels = None if max_labels is None else int(max_labels)
        self.smooth = float(smooth)
        self.padding_mode = padding_mode

    def _label_values(self, moving_label: torch.Tensor, fixed_label: torch.Tensor) -> torch.Tensor:
        values = torch.unique(torch.cat([moving_label.flatten(), fixed_label.flatten()]))
        values = values[values != 0]
        if self.max_labels is not None and values.numel() > self.max_labels:
            pick = torch.randperm(values.numel())[: self.max_labels].to(values.device)
            values = values[pick.sort().values]
        return values

    def forward(self, moving_label: torch.Tensor, fixed_label: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        """
        Args:
            moving_label: (B, 1, *S) label map of the moving image (integer values, any dtype).
            fixed_label: (B, 1, *S) label map of the fixed image, same values.
            ddf: (B, spatial_dims, *S) displacement in voxels that warps the moving image onto the fixed one.

        Returns:
            the scalar loss (0-dim tensor); 0 (with a gradient) when neither map has a foreground label.
        """
        spatial_dims = ddf.shape[1]
        expected = (ddf.shape[0], 1, *ddf.shape[2:])
        for name, label in (("moving_label", moving_label), ("fixed_label", fixed_label)):
            if tuple(label.shape) != expected:
                raise ValueError(
                    f"{name} must be a one-channel label map {expected} matching the ddf {tuple(ddf.shape)}, "
                    f"got {tuple(label.shape)}."
                )
        values = self._label_values(moving_label, fixed_label).to(ddf.dtype)
        if values.numel() == 0:
            return ddf.sum() * 0.0
        values = values.view(1, -1, *([1] * spatial_dims))
        moving_onehot = (moving_label.to(ddf.dtype) == values).to(ddf.dtype)
        fixed_onehot = (fixed_label.to(ddf.dtype) == values).to(ddf.dtype)
        warped = warp_with_ddf(moving_onehot, ddf, self.padding_mode)
        axes = tuple(range(2, 2 + spatial_dims))
        overlap = (warped * fixed_onehot).sum(axes)
        total = warped.sum(axes) + fixed_onehot.sum(axes)
        dice = (2.0 * overlap + self.smooth) / (total + self.smooth)
        present = (moving_onehot.sum(axes) + fixed_onehot.sum(axes)) > 0
        return 1.0 - dice[present].mean()
