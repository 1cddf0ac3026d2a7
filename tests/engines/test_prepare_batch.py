# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
import torch

from monai.data import MetaTensor

from monai_sacb.engines import PreparePairBatch


def _batch(labels: bool = True) -> dict:
    batch = {
        "moving_image": MetaTensor(torch.rand(2, 1, 4, 4, 4), meta={"filename_or_obj": ["m0", "m1"]}),
        "fixed_image": MetaTensor(torch.rand(2, 1, 4, 4, 4), meta={"filename_or_obj": ["f0", "f1"]}),
    }
    if labels:
        batch["moving_label"] = torch.randint(0, 3, (2, 1, 4, 4, 4))
        batch["fixed_label"] = torch.randint(0, 3, (2, 1, 4, 4, 4))
    return batch


def test_pair_is_moving_then_fixed_as_plain_tensors():
    batch = _batch()
    pair, target = PreparePairBatch()(batch, device="cpu")
    assert type(pair) is torch.Tensor and type(target) is torch.Tensor  # no moving-image metadata downstream
    torch.testing.assert_close(pair[:, :1], batch["moving_image"].as_tensor())
    torch.testing.assert_close(pair[:, 1:], batch["fixed_image"].as_tensor())
    torch.testing.assert_close(target, batch["fixed_image"].as_tensor())
    assert isinstance(batch["moving_image"], MetaTensor)  # the batch itself is left as it was


def test_target_key_selects_the_label_and_is_none_when_absent():
    batch = _batch()
    _, target = PreparePairBatch(target_key="fixed_label")(batch)
    assert torch.equal(target, batch["fixed_label"])
    _, missing = PreparePairBatch(target_key="fixed_label")(_batch(labels=False))
    assert missing is None
    _, none = PreparePairBatch(target_key=None)(batch)
    assert none is None


def test_missing_image_key_names_what_is_there():
    with pytest.raises(KeyError, match=r"needs 'moving_image' and 'fixed_image'.*keys found: \['image'\]"):
        PreparePairBatch()({"image": torch.zeros(1)})


def test_supervised_trainer_runs_one_step_with_the_pair_inferer():
    from monai.engines import SupervisedTrainer

    from monai_sacb.inferers import PairInferer
    from monai_sacb.losses import RegistrationLoss

    network = torch.nn.Conv3d(2, 3, 3, padding=1)
    before = network.weight.detach().clone()
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[_batch(labels=False)],
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=RegistrationLoss(similarity="mse", regularization="diffusion"),
        prepare_batch=PreparePairBatch(),
        inferer=PairInferer(),
        decollate=False,
    )
    trainer.run()
    assert set(trainer.state.output["pred"]) == {"warped_image", "ddf"}
    assert torch.isfinite(trainer.state.output["loss"])
    assert not torch.equal(network.weight, before)  # the loss reached the network through the warp


def test_a_sequence_of_target_keys_gives_a_dictionary_of_those_present():
    batch = _batch()
    keys = ["fixed_image", "moving_label", "fixed_label"]
    _, targets = PreparePairBatch(target_key=keys)(batch, device="cpu")
    assert list(targets) == keys
    assert all(type(value) is torch.Tensor for value in targets.values())
    torch.testing.assert_close(targets["fixed_image"], batch["fixed_image"].as_tensor())
    assert torch.equal(targets["moving_label"], batch["moving_label"])
    _, without_labels = PreparePairBatch(target_key=keys)(_batch(labels=False))
    assert list(without_labels) == ["fixed_image"]
