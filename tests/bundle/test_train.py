# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch

from monai_sacb.engines import latest_checkpoint
from monai_sacb.networks import SACBNetDDF
from tests.bundle.conftest import INFERENCE, META, TRAIN, run_workflow, tiny_overrides


def _workflow(config_file, workflow_type, **overrides):
    from monai.bundle import ConfigWorkflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ConfigWorkflow(config_file=config_file, meta_file=META, workflow_type=workflow_type, **overrides)


@pytest.mark.parametrize("config_file, workflow_type", [(TRAIN, "train"), (INFERENCE, "infer")])
def test_config_properties(config_file, workflow_type, tmp_path):
    os.makedirs(tmp_path / "models")
    if workflow_type == "infer":  # inference loads it (training refuses a model.pt without checkpoints)
        torch.save({"model": SACBNetDDF().state_dict()}, tmp_path / "models" / "model.pt")
    workflow = _workflow(config_file, workflow_type, bundle_root=str(tmp_path), data_format="default")
    workflow.initialize()
    missing_optional = workflow.check_properties()  # raises when a required property is missing
    assert missing_optional is None or isinstance(missing_optional, list)
    for name in ("bundle_root", "device", "dataset_dir"):
        assert workflow.parser.get(name) is not None
    if workflow_type == "train":
        for name in ("train#trainer", "train#dataset#data", "train#handlers", "train#inferer", "validate#evaluator"):
            assert workflow.parser.get(name) is not None, name
        assert workflow.parser["train#trainer"]["max_epochs"] == "@max_epochs"


def test_train_checkpoint_interrupt_resume(tmp_path, tiny_cache):
    """Train, stop in the middle of epoch 2, resume: epoch 1 is kept, epoch 2 is redone, training completes."""
    from ignite.engine import Events

    from monai.bundle import ConfigWorkflow

    overrides = tiny_overrides(tmp_path, tiny_cache, max_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = ConfigWorkflow(config_file=TRAIN, meta_file=META, workflow_type="train", **overrides)
        first.initialize()
    trainer = first.parser.get_parsed_content("train#trainer")

    def interrupt(engine):
        raise KeyboardInterrupt("simulated interruption")

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), interrupt)  # iteration 1 of epoch 2
    with pytest.raises(KeyboardInterrupt):
        first.run()
    ckpt_dir = tmp_path / "models"
    assert latest_checkpoint(ckpt_dir) == str(ckpt_dir / "checkpoint_epoch=1.pt")
    assert (ckpt_dir / "model.pt").is_file()
    saved = torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=True)
    assert set(saved) == {"model", "optimizer", "lr_scheduler", "trainer", "key_metric"}
    assert saved["trainer"]["iteration"] == 2  # 2 iterations per epoch: the end of epoch 1
    best = torch.load(ckpt_dir / "model.pt", weights_only=True)
    assert set(best) == set(SACBNetDDF().state_dict())  # model.pt: a plain state dict, as in the Model Zoo

    second = run_workflow(TRAIN, **overrides)
    trainer = second.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 4  # resumed after epoch 1, not restarted
    assert latest_checkpoint(ckpt_dir) == str(ckpt_dir / "checkpoint_epoch=2.pt")
    scheduler = second.parser.get_parsed_content("lr_scheduler")
    assert scheduler.last_epoch == 2
    evaluator = second.parser.get_parsed_content("validate#evaluator")
    metrics = evaluator.state.metrics
    assert set(metrics) >= {"val_mean_dice", "val_identity_dice", "val_folding_percent"}
    assert 0.0 < metrics["val_identity_dice"] < 1.0


def test_resume_disabled_starts_from_scratch(tmp_path, trained_root, tiny_cache):
    import shutil

    shutil.copytree(trained_root / "models", tmp_path / "models")
    workflow = run_workflow(TRAIN, **tiny_overrides(tmp_path, tiny_cache, max_epochs=1, resume=False))
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 2


def _assert_fails(pattern, *args, **kwargs):
    """The run fails, and the message of the error or of one of its causes (MONAI wraps them) matches."""
    with pytest.raises(Exception) as info:
        run_workflow(*args, **kwargs)
    error, messages = info.value, []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    assert any(re.search(pattern, m, re.S) for m in messages), messages


def test_bad_dataset_dir_fails_at_once(tmp_path):
    missing = tmp_path / "no_such_folder"
    _assert_fails("does not exist", TRAIN, bundle_root=str(tmp_path), data_format="lpba40", dataset_dir=str(missing))


def test_bad_format_name_fails_at_once(tmp_path):
    pattern = "unknown data format 'nifti'.*valid: default"
    _assert_fails(pattern, TRAIN, bundle_root=str(tmp_path), data_format="nifti", dataset_dir=str(tmp_path))


def test_checkpoint_of_another_network_fails_at_once(tmp_path, tiny_cache):
    os.makedirs(tmp_path / "models")
    other = SACBNetDDF(base_channels=2)
    torch.save({"model": other.state_dict()}, tmp_path / "models" / "checkpoint_epoch=3.pt")
    _assert_fails("was not saved from this network", TRAIN, **tiny_overrides(tmp_path, tiny_cache))
    # inference with a wrong --ckpt_path, and with none
    torch.save(other.state_dict(), tmp_path / "other.pt")
    other_ckpt = str(tmp_path / "other.pt")
    _assert_fails("was not saved from this network", INFERENCE, "infer", bundle_root=str(tmp_path), ckpt_path=other_ckpt)
    _assert_fails("checkpoint not found", INFERENCE, "infer", bundle_root=str(tmp_path / "empty"))


def test_main_job_data_trains_and_validates_on_held_out_anatomy(tmp_path):
    """The main job's data format at 8 mm: label-synthesised training pairs, held-out validation pairs."""
    root = tmp_path / "bundle"
    overrides = tiny_overrides(root, tmp_path / "cache", max_epochs=1, num_samples=2)
    overrides.update(data_format="synth", ckpt_dir=str(root / "runs"))
    workflow = run_workflow(TRAIN, **overrides)
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    assert set(metrics) >= {"val_mean_dice", "val_identity_dice", "val_folding_percent", "val_sd_log_jacobian"}
    assert 0.0 < metrics["val_identity_dice"] < 1.0
    assert (root / "runs" / "model.pt").is_file() and (root / "runs" / "checkpoint_epoch=1.pt").is_file()
    assert not (root / "models").exists()  # the shipped model's folder is never written by training
