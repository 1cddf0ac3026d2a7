# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_sacb.losses import RegistrationLoss, WarpedLabelDiceLoss


def _labels() -> torch.Tensor:
    """(1, 1, 16, 16, 16): a 6^3 cube of label 3, a 4^3 block of label 7, a 2^3 block of label 9, background 0."""
    label = torch.zeros(1, 1, 16, 16, 16)
    label[..., 4:10, 4:10, 4:10] = 3
    label[..., 10:14, 2:6, 2:6] = 7
    label[..., 1:3, 12:14, 12:14] = 9
    return label


def _reference_loss(warped: np.ndarray, fixed: np.ndarray, values) -> float:
    """1 - mean Dice of hard label maps over ``values`` (one sample)."""
    dice = [2 * np.sum((warped == v) & (fixed == v)) / (np.sum(warped == v) + np.sum(fixed == v)) for v in values]
    return 1.0 - float(np.mean(dice))


def test_identical_maps_give_zero():
    label = _labels()
    loss = WarpedLabelDiceLoss()(label, label, torch.zeros(1, 3, 16, 16, 16))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_shifted_maps_give_the_hard_dice_of_the_overlap():
    moving = _labels()
    fixed = torch.zeros_like(moving)
    fixed[..., 2:, :, :] = moving[..., :-2, :, :]  # shifted by 2 voxels along the first axis
    loss = WarpedLabelDiceLoss()(moving, fixed, torch.zeros(1, 3, 16, 16, 16))
    # label 3: overlap 4*36 of 2*216; label 7: 2*16 of 2*64; label 9: 0 (its 2-voxel block moved off itself)
    expected = 1.0 - (2 * 144 / 432 + 2 * 32 / 128 + 0.0) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert loss.item() == pytest.approx(_reference_loss(moving.numpy(), fixed.numpy(), (3, 7, 9)), abs=1e-5)


def test_the_displacement_that_undoes_the_shift_gives_zero_and_a_gradient_toward_it():
    moving = _labels()
    fixed = torch.zeros_like(moving)
    fixed[..., 2:, :, :] = moving[..., :-2, :, :]
    ddf = torch.zeros(1, 3, 16, 16, 16)
    ddf[:, 0] = -2.0  # warped(p) = moving(p - 2) = fixed(p)
    assert WarpedLabelDiceLoss()(moving, fixed, ddf).item() == pytest.approx(0.0, abs=1e-6)
    ddf = torch.full((1, 3, 16, 16, 16), 0.0)
    ddf[:, 0] = -1.5
    ddf.requires_grad_(True)
    WarpedLabelDiceLoss()(moving, fixed, ddf).backward()
    # on the way there, the loss falls as the displacement along axis 0 grows more negative
    assert ddf.grad[:, 0].sum().item() > 0


def test_a_subset_of_labels_is_scored_reproducibly():
    moving = _labels()
    fixed = torch.zeros_like(moving)
    fixed[..., 2:, :, :] = moving[..., :-2, :, :]
    loss = WarpedLabelDiceLoss(max_labels=1)
    values = set()
    for seed in range(12):
        torch.manual_seed(seed)
        first = loss(moving, fixed, torch.zeros(1, 3, 16, 16, 16)).item()
        torch.manual_seed(seed)
        assert loss(moving, fixed, torch.zeros(1, 3, 16, 16, 16)).item() == first
        values.add(round(first, 4))
    singles = {round(_reference_loss(moving.numpy(), fixed.numpy(), (v,)), 4) for v in (3, 7, 9)}
    assert values == singles  # each call scores exactly one of the three labels, and all three come up


def test_labels_absent_from_a_sample_do_not_count():
    first = _labels()
    second = torch.zeros_like(first)
    second[..., 4:10, 4:10, 4:10] = 3  # only label 3, matched exactly
    shifted = torch.zeros_like(first)
    shifted[..., 2:, :, :] = first[..., :-2, :, :]
    moving = torch.cat([first, second])
    fixed = torch.cat([shifted, second])
    loss = WarpedLabelDiceLoss()(moving, fixed, torch.zeros(2, 3, 16, 16, 16))
    dice_first = [2 * 144 / 432, 2 * 32 / 128, 0.0]
    assert loss.item() == pytest.approx(1.0 - (sum(dice_first) + 1.0) / 4, abs=1e-5)


def test_background_only_gives_zero_with_a_gradient_and_bad_shapes_are_named():
    ddf = torch.zeros(1, 3, 8, 8, 8, requires_grad=True)
    loss = WarpedLabelDiceLoss()(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8), ddf)
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="fixed_label must be a one-channel label map"):
        WarpedLabelDiceLoss()(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8), ddf)
    with pytest.raises(ValueError, match="max_labels"):
        WarpedLabelDiceLoss(max_labels=0)


def test_registration_loss_adds_the_weighted_label_term():
    torch.manual_seed(0)
    moving, fixed_image = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    moving_label = _labels()
    fixed_label = torch.zeros_like(moving_label)
    fixed_label[..., 2:, :, :] = moving_label[..., :-2, :, :]
    ddf = 0.3 * torch.randn(1, 3, 16, 16, 16)
    plain = RegistrationLoss(reg_weight=1.5)
    combined = RegistrationLoss(reg_weight=1.5, label_weight=2.0)
    targets = {"fixed_image": fixed_image, "moving_label": moving_label, "fixed_label": fixed_label}
    value = combined((moving, ddf), targets)
    dice = WarpedLabelDiceLoss()(moving_label, fixed_label, ddf)
    assert value.item() == pytest.approx(plain(moving, fixed_image, ddf).item() + 2.0 * dice.item(), abs=1e-5)
    assert set(combined.last_terms) == {"similarity", "label", "regularization", "loss"}
    assert combined.last_terms["label"].item() == pytest.approx(dice.item(), abs=1e-6)
    # the same with the label maps given as arguments
    direct = combined(moving, fixed_image, ddf, moving_label=moving_label, fixed_label=fixed_label)
    assert direct.item() == pytest.approx(value.item(), abs=1e-6)


def test_label_only_loss_skips_the_image_similarity():
    moving_label = _labels()
    ddf = torch.zeros(1, 3, 16, 16, 16)
    loss = RegistrationLoss(similarity_weight=0.0, label_weight=1.0)
    pred = {"warped_image": torch.rand(1, 1, 16, 16, 16), "ddf": ddf}
    value = loss(pred, {"moving_label": moving_label, "fixed_label": moving_label})
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert "similarity" not in loss.last_terms


def test_label_term_without_labels_and_empty_losses_are_refused():
    loss = RegistrationLoss(label_weight=1.0)
    with pytest.raises(ValueError, match="label_weight > 0 needs the moving and fixed label maps"):
        loss(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="both 0"):
        RegistrationLoss(similarity_weight=0.0)
    with pytest.raises(ValueError, match="label_weight must be >= 0"):
        RegistrationLoss(label_weight=-1.0)
