# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_sacb.metrics import jacobian_determinant
from monai_sacb.networks.blocks import warp_with_ddf
from monai_sacb.transforms import (
    RandLabelSynthPaird,
    integrate_velocity,
    random_affine_ddf,
    random_velocity_ddf,
    synthesize_image,
)

SHAPE = (32, 40, 32)


def _labels(shape=SHAPE, seed=0, num_labels=6, block=8):
    """Blocky label map with a zero border (the background), values 1..num_labels inside."""
    rng = np.random.RandomState(seed)
    coarse = rng.randint(1, num_labels + 1, size=[s // block for s in shape])
    for axis in range(len(shape)):
        coarse = coarse.repeat(block, axis=axis)
    coarse[:4], coarse[-4:] = 0, 0
    return torch.as_tensor(coarse, dtype=torch.int64)[None]


def _nearest(volume, ddf):
    grid_sample = torch.nn.functional.grid_sample
    from monai_sacb.networks.blocks import ddf_sampling_grid

    out = grid_sample(volume[None].float(), ddf_sampling_grid(ddf[None]), mode="nearest", align_corners=True)
    return out[0].round()


def test_integrating_a_constant_velocity_gives_that_translation():
    velocity = torch.zeros(3, *SHAPE)
    velocity[0], velocity[2] = 1.5, -0.75
    torch.testing.assert_close(integrate_velocity(velocity), velocity, atol=1e-5, rtol=0)
    assert torch.equal(integrate_velocity(torch.zeros(2, 8, 8)), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="spatial_dims"):
        integrate_velocity(torch.zeros(3, 8, 8))


def test_velocity_deformation_is_seeded_smooth_and_invertible():
    ddf, inverse = random_velocity_ddf(SHAPE, rng=np.random.RandomState(3), return_inverse=True)
    assert ddf.shape == inverse.shape == (3, *SHAPE) and ddf.dtype == torch.float32
    assert torch.equal(ddf, random_velocity_ddf(SHAPE, rng=np.random.RandomState(3)))
    assert not torch.equal(ddf, random_velocity_ddf(SHAPE, rng=np.random.RandomState(4)))
    assert float(ddf.norm(dim=0).max()) > 0.5  # it moves
    assert float(jacobian_determinant(ddf[None]).min()) > 0  # no folding
    # composing the deformation with its inverse gives (almost) the identity away from the borders
    composed = inverse + warp_with_ddf(ddf[None], inverse[None], padding_mode="border")[0]
    interior = composed[:, 6:-6, 6:-6, 6:-6]
    assert float(interior.norm(dim=0).max()) < 0.15 * float(ddf.norm(dim=0).max())


def test_affine_ddf_is_an_affine_map():
    assert torch.equal(random_affine_ddf(SHAPE), torch.zeros(3, *SHAPE))
    ddf = random_affine_ddf(SHAPE, rotation=10, scaling=0.1, translation=2, rng=np.random.RandomState(0)).double()
    # an affine displacement has zero second differences along every axis
    for axis in range(3):
        assert float(torch.diff(ddf, n=2, dim=1 + axis).abs().max()) < 1e-4
    assert float(ddf.abs().max()) > 1.0
    ddf2d = random_affine_ddf((16, 20), rotation=5, rng=np.random.RandomState(0))
    assert ddf2d.shape == (2, 16, 20)


def test_synthesized_image_is_constant_per_label_without_noise():
    label = _labels()
    image, means, stds = synthesize_image(label, np.random.RandomState(0), std_range=(0, 0), background_zero_prob=1)
    assert image.shape == label.shape and image.dtype == torch.float32
    assert float(means[0]) == 0.0
    for value in label.unique():
        region = image[label == value]
        assert torch.equal(region, torch.full_like(region, float(means[value])))
    # the same parameters give the same contrast on another label map
    other, _, _ = synthesize_image(_labels(seed=1), np.random.RandomState(5), means=means, stds=stds)
    assert torch.equal(other, means[_labels(seed=1)])
    with pytest.raises(ValueError, match="label map needs"):
        synthesize_image(label, np.random.RandomState(0), means=means[:2], stds=stds[:2])


def _pair(seed=0, **kwargs):
    label = MetaTensor(_labels().float(), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    image = (label / 6.0).clone()
    maker = RandLabelSynthPaird(ddf_keys=("ddf_moving", "ddf_fixed"), **kwargs)
    maker.set_random_state(seed)
    return maker({"label": label, "image": image}), label, image


def test_pair_keys_shapes_and_value_ranges():
    out, label, _ = _pair()
    assert set(out) == {"moving_image", "fixed_image", "moving_label", "fixed_label", "ddf_moving", "ddf_fixed"}
    for key in ("moving_image", "fixed_image", "moving_label", "fixed_label"):
        assert out[key].shape == label.shape
        assert isinstance(out[key], MetaTensor) and torch.equal(out[key].affine, label.affine)
    for key in ("moving_image", "fixed_image"):
        assert float(out[key].min()) >= 0.0 and float(out[key].max()) <= 1.0
    for key in ("moving_label", "fixed_label"):
        assert set(out[key].unique().tolist()) <= set(label.unique().tolist())


def test_labels_are_the_source_warped_by_each_sides_deformation():
    out, label, _ = _pair(seed=2, same_geometry_prob=0.0)
    for side in ("moving", "fixed"):
        assert torch.equal(out[f"{side}_label"].as_tensor(), _nearest(label.as_tensor(), out[f"ddf_{side}"]))
    assert not torch.equal(out["ddf_moving"], out["ddf_fixed"])  # independent sides


def test_same_geometry_pairs_share_the_deformation():
    out, _, _ = _pair(seed=1, same_geometry_prob=1.0)
    assert torch.equal(out["ddf_moving"], out["ddf_fixed"])
    assert torch.equal(out["moving_label"], out["fixed_label"])


@pytest.mark.parametrize("same_geometry_prob, flag", [(1.0, 1.0), (0.0, 0.0)])
def test_same_geometry_flag(same_geometry_prob, flag):
    """same_geometry_key flags the pairs that need no motion (RegistrationLoss's zero-motion term reads it)."""
    label = MetaTensor(_labels().float(), affine=torch.eye(4))
    maker = RandLabelSynthPaird(same_geometry_prob=same_geometry_prob, same_geometry_key="same_geometry")
    out = maker.set_random_state(0)({"label": label})
    assert out["same_geometry"].dtype == torch.float32 and out["same_geometry"].shape == ()
    assert out["same_geometry"].item() == flag
    assert torch.equal(out["moving_label"], out["fixed_label"]) == bool(flag)
    assert "same_geometry" not in _pair()[0]  # no key unless asked for


def test_synthetic_images_follow_their_labels():
    # no blur, noise, bias or gamma: every label region of an image has one intensity, the same on both sides
    out, _, _ = _pair(
        seed=4,
        real_image_prob=0.0,
        std_range=(0, 0),
        blur_sigma_range=(0, 0),
        bias_field_magnitude=0.0,
        gamma_range=(1, 1),
        noise_std_range=(0, 0),
    )
    values = {}
    for side in ("moving", "fixed"):
        image, label = out[f"{side}_image"], out[f"{side}_label"]
        for value in label.unique().tolist():
            region = image[label == value]
            assert float(region.max() - region.min()) < 1e-5
            values.setdefault(value, []).append(float(region[0]))
    assert all(abs(v[0] - v[-1]) < 1e-5 for v in values.values())  # shared contrast
    assert len({round(v[0], 4) for v in values.values()}) > 3  # a random contrast, not the source image


def test_real_image_pairs_warp_the_given_image():
    out, _, image = _pair(seed=5, real_image_prob=1.0, bias_field_magnitude=0.0, gamma_range=(1, 1), noise_std_range=(0, 0))
    expected = warp_with_ddf(image.as_tensor()[None], out["ddf_moving"][None])[0]
    expected = expected / torch.quantile(expected[expected > 1e-3], 0.995)
    torch.testing.assert_close(out["moving_image"].as_tensor(), expected.clamp(0, 1), atol=1e-5, rtol=0)


def test_pairs_are_reproducible_with_a_seed_and_differ_otherwise():
    first, _, _ = _pair(seed=7)
    again, _, _ = _pair(seed=7)
    other, _, _ = _pair(seed=8)
    for key in ("moving_image", "fixed_label", "ddf_fixed"):
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["moving_image"], other["moving_image"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pairs_synthesised_on_cuda_equal_the_cpu_ones():
    """The transform runs where its input lies; the random draws come from the seeded numpy state either way."""
    cpu, label, image = _pair(seed=6)
    maker = RandLabelSynthPaird(ddf_keys=("ddf_moving", "ddf_fixed"))
    maker.set_random_state(6)
    gpu = maker({"label": label.cuda(), "image": image.cuda()})
    assert set(gpu) == set(cpu)
    for key in ("ddf_moving", "ddf_fixed"):
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], atol=1e-4, rtol=0)
    for key in ("moving_label", "fixed_label"):
        assert gpu[key].device.type == "cuda"
        # nearest-neighbour labels may differ where a sample lands within rounding of a voxel boundary
        assert float((gpu[key].cpu() != cpu[key]).float().mean()) < 1e-3
    for key in ("moving_image", "fixed_image"):
        difference = (gpu[key].cpu() - cpu[key]).abs()
        assert float(difference.mean()) < 1e-3 and float((difference > 1e-2).float().mean()) < 1e-3


def test_two_dimensional_pairs():
    label = _labels((32, 40))
    maker = RandLabelSynthPaird(image_key=None, scales=((8.0, 3.0),), affine_rotation=5)
    maker.set_random_state(0)
    out = maker({"label": label})
    assert out["moving_image"].shape == out["fixed_label"].shape == (1, 32, 40)


def test_bad_inputs_are_named():
    maker = RandLabelSynthPaird()
    with pytest.raises(KeyError, match="label"):
        maker({"image": torch.zeros(1, 8, 8, 8)})
    with pytest.raises(ValueError, match=r"\(1, \*spatial\)"):
        maker({"label": torch.zeros(2, 8, 8, 8)})
    with pytest.raises(ValueError, match="shapes differ"):
        maker({"label": torch.zeros(1, 8, 8, 8), "image": torch.zeros(1, 8, 8, 16)})
    with pytest.raises(ValueError, match="probabilities"):
        RandLabelSynthPaird(real_image_prob=2.0)


def test_spacing_scales_the_synthesis_lengths_to_the_grid():
    reference = RandLabelSynthPaird()
    fine = RandLabelSynthPaird(spacing=1.0)  # half the reference voxel: lengths in voxels double
    assert fine.scales == tuple((2 * s, 2 * v) for s, v in reference.scales)
    assert fine.affine == (reference.affine[0], reference.affine[1], 2 * reference.affine[2])
    assert fine.bias_field_spacing == 2 * reference.bias_field_spacing
    assert RandLabelSynthPaird(spacing=0).scales == reference.scales
