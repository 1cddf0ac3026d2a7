# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch
from monai.losses import (
    BendingEnergyLoss,
    DiffusionLoss,
    GlobalMutualInformationLoss,
    LocalNormalizedCrossCorrelationLoss,
)

from monai_sacb.losses import (
    PAPER_REG_WEIGHTS,
    REGULARIZATION_NAMES,
    SIMILARITY_NAMES,
    FastLocalNormalizedCrossCorrelationLoss,
    ForwardDiffusionLoss,
    RegistrationLoss,
)


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(2, 1, 16, 16, 16)


def test_identical_images_zero_ddf_reach_the_minimum(images):
    loss = RegistrationLoss()
    value = loss(images, images, torch.zeros(2, 3, 16, 16, 16))
    assert value.ndim == 0
    assert value.item() == pytest.approx(-1.0, abs=1e-4)
    assert loss.last_terms["similarity"].item() == pytest.approx(-1.0, abs=1e-4)
    assert loss.last_terms["regularization"].item() == 0.0
    assert loss.last_terms["loss"].item() == pytest.approx(value.item())


def test_default_is_the_papers_ncc_window():
    loss = RegistrationLoss()
    assert loss.similarity.kernel_size == 9
    assert torch.equal(loss.similarity.kernel, torch.ones(9))  # rectangular
    assert isinstance(loss.regularization, ForwardDiffusionLoss)


def test_constant_ddf_has_no_regularization(images):
    loss = RegistrationLoss(reg_weight=5.0)
    loss(images, images, torch.full((2, 3, 16, 16, 16), 2.5))
    assert loss.last_terms["regularization"].item() == 0.0


def test_weight_scales_only_the_regulariser(images):
    torch.manual_seed(2)
    fixed = torch.rand_like(images)
    ddf = torch.randn(2, 3, 16, 16, 16)
    base = RegistrationLoss(reg_weight=0.0)
    sim = base(images, fixed, ddf)
    reg = base.last_terms["regularization"]
    assert reg > 0
    for weight in (0.3, 1.0, 3.0):
        value = RegistrationLoss(reg_weight=weight)(images, fixed, ddf)
        assert value.item() == pytest.approx((sim + weight * reg).item(), rel=1e-5)


def test_pred_tuple_for_supervised_trainer(images):
    torch.manual_seed(3)
    fixed, ddf = torch.rand_like(images), torch.randn(2, 3, 16, 16, 16)
    loss = RegistrationLoss(reg_weight=3.0)
    assert torch.allclose(loss((images, ddf), fixed), loss(images, fixed, ddf))
    with pytest.raises(ValueError, match="ddf is missing"):
        loss(images, fixed)


def test_pred_dict_of_the_pair_inferer(images):
    torch.manual_seed(3)
    fixed, ddf = torch.rand_like(images), torch.randn(2, 3, 16, 16, 16)
    loss = RegistrationLoss(reg_weight=3.0)
    assert torch.equal(loss({"warped_image": images, "ddf": ddf}, fixed), loss(images, fixed, ddf))
    with pytest.raises(ValueError, match="ddf is missing"):
        loss({"warped_image": images}, fixed)


def test_gradients_flow_to_warped_and_ddf(images):
    warped = images.clone().requires_grad_(True)
    ddf = torch.randn(2, 3, 16, 16, 16, requires_grad=True)
    RegistrationLoss()(warped, torch.rand_like(images), ddf).backward()
    assert warped.grad is not None and warped.grad.abs().sum() > 0
    assert ddf.grad is not None and ddf.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "similarity, regularization, sim_type, reg_type",
    [
        ("mse", "bending", torch.nn.MSELoss, BendingEnergyLoss),
        ("MI", "monai_diffusion", GlobalMutualInformationLoss, DiffusionLoss),
        ("lncc", "Diffusion", torch.nn.Module, ForwardDiffusionLoss),
    ],
)
def test_selectable_options(images, similarity, regularization, sim_type, reg_type):
    loss = RegistrationLoss(similarity=similarity, regularization=regularization)
    assert isinstance(loss.similarity, sim_type)
    assert isinstance(loss.regularization, reg_type)
    value = loss(images, images, torch.zeros(2, 3, 16, 16, 16))
    assert torch.isfinite(value)
    assert loss.last_terms["regularization"].item() == 0.0


def test_mse_minimum_is_zero(images):
    loss = RegistrationLoss(similarity="mse")
    assert loss(images, images, torch.zeros(2, 3, 16, 16, 16)).item() == 0.0
    assert loss(images, images + 0.5, torch.zeros(2, 3, 16, 16, 16)).item() == pytest.approx(0.25)


def test_mi_prefers_the_aligned_pair(images):
    loss = RegistrationLoss(similarity="mi", reg_weight=0.0)
    zero = torch.zeros(2, 3, 16, 16, 16)
    aligned = loss(images, images, zero)
    shuffled = loss(images, torch.roll(images, shifts=5, dims=2), zero)
    assert aligned < shuffled


def test_kwargs_override_defaults():
    loss = RegistrationLoss(similarity_kwargs={"kernel_size": 5}, spatial_dims=2)
    assert loss.similarity.kernel_size == 5
    x = torch.rand(1, 1, 12, 12)
    assert loss(x, x, torch.zeros(1, 2, 12, 12)).item() == pytest.approx(-1.0, abs=1e-4)


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="unknown similarity 'ncc'.*'lncc', 'mse', 'mi'"):
        RegistrationLoss(similarity="ncc")
    with pytest.raises(ValueError, match="unknown regularization 'l2'.*'diffusion', 'bending'"):
        RegistrationLoss(regularization="l2")
    with pytest.raises(ValueError, match="reg_weight"):
        RegistrationLoss(reg_weight=-1.0)
    x = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="ddf of shape"):
        RegistrationLoss()(x, x, torch.zeros(1, 1, 8, 8, 8))


def test_plugs_into_supervised_trainer():
    from monai.engines import SupervisedTrainer
    from monai.networks.blocks import Warp

    class TinyReg(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 3, 3, padding=1)
            self.warp = Warp()

        def forward(self, x):
            ddf = self.conv(x)
            return self.warp(x[:, :1], ddf), ddf

    def prepare_batch(batch, device=None, non_blocking=False, **kwargs):
        moving, fixed = batch["moving_image"], batch["fixed_image"]
        return torch.cat([moving, fixed], dim=1), fixed

    torch.manual_seed(0)
    data = [{"moving_image": torch.rand(1, 1, 8, 8, 8), "fixed_image": torch.rand(1, 1, 8, 8, 8)}] * 2
    net = TinyReg()
    loss = RegistrationLoss(similarity_kwargs={"kernel_size": 3})
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=loss,
        prepare_batch=prepare_batch,
        decollate=False,
    )
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"])
    assert set(loss.last_terms) == {"similarity", "regularization", "loss"}
    assert trainer.state.output["loss"].item() == pytest.approx(loss.last_terms["loss"].item())


def test_registration_loss_similarities():
    assert {"lncc", "sacb_ncc", "monai_lncc"} <= set(SIMILARITY_NAMES)
    fast = RegistrationLoss(similarity="lncc")
    sacb = RegistrationLoss(similarity="sacb_ncc")
    reference = RegistrationLoss(similarity="monai_lncc")
    assert isinstance(fast.similarity, FastLocalNormalizedCrossCorrelationLoss) and fast.similarity.variant == "monai"
    assert isinstance(sacb.similarity, FastLocalNormalizedCrossCorrelationLoss) and sacb.similarity.variant == "sacb"
    assert isinstance(reference.similarity, LocalNormalizedCrossCorrelationLoss)
    for loss in (fast, sacb, reference):
        assert loss.similarity.kernel_size == 9
    torch.manual_seed(0)
    moving, fixed, ddf = torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12), torch.randn(1, 3, 12, 12, 12)
    assert fast(moving, fixed, ddf).item() == pytest.approx(reference(moving, fixed, ddf).item(), abs=1e-6)
    assert sacb(moving, fixed, ddf).item() == pytest.approx(reference(moving, fixed, ddf).item(), rel=1e-3)
    small = RegistrationLoss(similarity="sacb_ncc", spatial_dims=2, similarity_kwargs={"kernel_size": 5})
    assert small.similarity.kernel_size == 5 and small.similarity.ndim == 2


def test_every_listed_name_builds():
    assert SIMILARITY_NAMES == ("lncc", "mse", "mi", "sacb_ncc", "monai_lncc")
    assert REGULARIZATION_NAMES == ("diffusion", "bending", "monai_diffusion")
    x = torch.rand(1, 1, 10, 10, 10)
    ramp = torch.zeros(1, 3, 10, 10, 10)
    ramp[:, 0] = 0.5 * torch.arange(10.0).view(10, 1, 1)  # forward differences 0.5 along axis 0 of channel 0
    for name in SIMILARITY_NAMES:
        loss = RegistrationLoss(similarity=name.upper(), reg_weight=0.0)
        assert loss.similarity_name == name and torch.isfinite(loss(x, x, ramp))
    expected_reg = {
        "diffusion": 0.25 / 9,  # 0.25 on axis 0 of channel 0, averaged over 3 channels and 3 axes
        "monai_diffusion": 3 * 0.25 / 9,  # summed over the axes
        "bending": 0.0,  # a linear field has no second derivative
    }
    for name in REGULARIZATION_NAMES:
        loss = RegistrationLoss(similarity="mse", regularization=name)
        loss(x, x, ramp)
        assert loss.last_terms["regularization"].item() == pytest.approx(expected_reg[name], abs=1e-6)


def test_paper_reg_weights():
    # the lambda of the SACB-Net paper per data set
    assert PAPER_REG_WEIGHTS == {"ixi": 3.0, "lpba": 1.0, "abdomen_ct": 0.3}


def test_zero_motion_term_penalises_only_the_flagged_pairs(images):
    """zero_motion_weight adds the weighted mean squared displacement of the pairs flagged as needing no motion."""
    torch.manual_seed(1)
    ddf = torch.randn(2, 3, 16, 16, 16)
    fixed, warped = images, images.flip(0)
    plain = RegistrationLoss(reg_weight=1.5)
    zero = RegistrationLoss(reg_weight=1.5, zero_motion_weight=4.0)
    flags = torch.tensor([0.0, 1.0])
    value = zero((warped, ddf), {"fixed_image": fixed, "same_geometry": flags})
    # only the second pair counts, its mean over voxels of |u|^2 halved by the batch mean
    expected = sum(float(ddf[1, c].pow(2).mean()) for c in range(3)) / 2
    assert zero.last_terms["zero_motion"].item() == pytest.approx(expected, rel=1e-5)
    assert value.item() == pytest.approx(plain(warped, fixed, ddf).item() + 4.0 * expected, rel=1e-5)
    assert set(zero.last_terms) == {"similarity", "zero_motion", "regularization", "loss"}
    # no flagged pair: the plain loss; the flags as an argument
    none = zero(warped, fixed, ddf, same_geometry=torch.zeros(2))
    assert none.item() == pytest.approx(plain(warped, fixed, ddf).item(), abs=1e-6)
    # the gradient: u / N_voxels on the flagged pair (d/du of half the batch mean of mean |u|^2), none on the other
    ddf.requires_grad_(True)
    only = RegistrationLoss(reg_weight=0.0, zero_motion_weight=1.0)
    only(warped, fixed, ddf, same_geometry=flags).backward()
    torch.testing.assert_close(ddf.grad[1], ddf[1].detach() / 16**3, rtol=1e-5, atol=1e-9)
    assert torch.count_nonzero(ddf.grad[0]) == 0


def test_zero_motion_term_needs_the_flags():
    loss = RegistrationLoss(zero_motion_weight=1.0)
    pair = (torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="zero_motion_weight > 0 needs the same_geometry flags"):
        loss(*pair)
    with pytest.raises(ValueError, match="2 flags for a batch of 1"):
        loss(*pair, same_geometry=torch.ones(2))
    with pytest.raises(ValueError, match="zero_motion_weight must be >= 0"):
        RegistrationLoss(zero_motion_weight=-1.0)
