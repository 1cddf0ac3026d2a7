# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import logging
import os
import re
import shutil
import warnings

import pytest
import torch

from monai_sacb.handlers import latest_checkpoint
from monai_sacb.networks import SACBNetBackbone


@pytest.fixture
def workflow_of(bundle_configs):
    """``workflow_of(config_file, workflow_type, **overrides)``: a ConfigWorkflow of the bundle, not initialised."""
    from monai.bundle import ConfigWorkflow

    def make(config_file, workflow_type, **overrides):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ConfigWorkflow(
                config_file=config_file, meta_file=bundle_configs.meta, workflow_type=workflow_type, **overrides
            )

    return make


@pytest.fixture
def assert_fails(run_bundle, error_chain):
    """``assert_fails(pattern, config_file, workflow_type="train", **overrides)``: the run fails, and the message of
    the error or of one of its causes (MONAI wraps them) matches ``pattern``; returns the messages."""

    def check(pattern, *args, **kwargs) -> str:
        with pytest.raises(Exception) as info:
            run_bundle(*args, **kwargs)
        messages = error_chain(info)
        assert re.search(pattern, messages, re.S), messages
        return messages

    return check


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
def test_config_properties(workflow_type, tmp_path, bundle_configs, workflow_of):
    os.makedirs(tmp_path / "models")
    if workflow_type == "infer":  # inference loads it (training refuses a model.pt without checkpoints)
        torch.save({"model": SACBNetBackbone().state_dict()}, tmp_path / "models" / "model.pt")
        config_file = bundle_configs.inference
    else:
        config_file = bundle_configs.tiny_train
    workflow = workflow_of(config_file, workflow_type, bundle_root=str(tmp_path), data_format="default")
    workflow.initialize()
    missing_optional = workflow.check_properties()  # raises when a required property is missing
    assert missing_optional is None or isinstance(missing_optional, list)
    for name in ("bundle_root", "device", "dataset_dir"):
        assert workflow.parser.get(name) is not None
    if workflow_type == "train":
        for name in ("train#trainer", "train#dataset#data", "train#handlers", "train#inferer", "validate#evaluator"):
            assert workflow.parser.get(name) is not None, name
        assert workflow.parser["train#trainer"]["max_epochs"] == "@max_epochs"
        assert workflow.parser["pipeline"] == "default"  # set by data_default.json


def test_train_checkpoint_interrupt_resume(
    tmp_path, tiny_cache, bundle_configs, tiny_overrides, workflow_of, run_bundle
):
    """Train, stop in the middle of epoch 2, resume: epoch 1 is kept, epoch 2 is redone, training completes."""
    from ignite.engine import Events

    overrides = tiny_overrides(tmp_path, tiny_cache, max_epochs=2)
    first = workflow_of(bundle_configs.tiny_train, "train", **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
    assert set(best) == set(SACBNetBackbone().state_dict())  # model.pt: a plain state dict, as in the Model Zoo

    second = run_bundle(bundle_configs.tiny_train, **overrides)
    trainer = second.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 4  # resumed after epoch 1, not restarted
    assert latest_checkpoint(ckpt_dir) == str(ckpt_dir / "checkpoint_epoch=2.pt")
    scheduler = second.parser.get_parsed_content("lr_scheduler")
    assert scheduler.last_epoch == 2
    evaluator = second.parser.get_parsed_content("validate#evaluator")
    metrics = evaluator.state.metrics
    assert set(metrics) >= {"val_mean_dice", "val_identity_dice", "val_folding_percent"}
    assert 0.0 < metrics["val_identity_dice"] < 1.0


def test_resume_disabled_starts_from_scratch(
    tmp_path, trained_root, tiny_cache, bundle_configs, tiny_overrides, run_bundle
):
    shutil.copytree(trained_root / "models", tmp_path / "models")
    overrides = tiny_overrides(tmp_path, tiny_cache, max_epochs=1, resume=False)
    workflow = run_bundle(bundle_configs.tiny_train, **overrides)
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 2


def test_training_logs_the_loss_of_every_iteration(tmp_path, tiny_cache, bundle_configs, tiny_overrides, run_bundle):
    """Without the progress bar, StatsHandler logs train_loss at every iteration (a value, not an ignored tuple)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    # StatsHandler logs to its own logger, whose stream is the stdout of the first test that created it
    keep, loggers = Keep(level=logging.INFO), [logging.getLogger("monai.handlers.StatsHandler")]
    for logger in loggers:
        logger.addHandler(keep)
    try:
        run_bundle(bundle_configs.tiny_train, **tiny_overrides(tmp_path, tiny_cache, max_epochs=1))
    finally:
        for logger in loggers:
            logger.removeHandler(keep)
    logged = dict(re.findall(r"Epoch: 1/1, Iter: (\d)/2 -- train_loss: (-?[0-9.]+)", "\n".join(messages)))
    assert sorted(logged) == ["1", "2"], messages[-20:]
    assert all(-1.0 <= float(v) < 10.0 for v in logged.values())  # -LNCC (>= -1) + a small diffusion term


def test_bad_dataset_dir_fails_at_once(tmp_path, bundle_configs, assert_fails):
    missing = tmp_path / "no_such_folder"
    config_files = [bundle_configs.train, bundle_configs.data_files]
    overrides = {"bundle_root": str(tmp_path), "data_format": "lpba40", "dataset_dir": str(missing)}
    assert_fails("does not exist", config_files, **overrides)
    assert not (tmp_path / "runs").exists()


def test_bad_format_name_fails_at_once(tmp_path, bundle_configs, assert_fails):
    pattern = "unknown data format 'nifti'.*valid: default"
    overrides = {"bundle_root": str(tmp_path), "data_format": "nifti", "dataset_dir": str(tmp_path)}
    assert_fails(pattern, bundle_configs.train, **overrides)


def test_file_format_without_its_override_file_names_data_files_json(tmp_path, bundle_configs, assert_fails):
    """train.json alone prepares synthesised pairs; a file format needs data_files.json after it (#8)."""
    (tmp_path / "lpba40").mkdir()
    overrides = {"bundle_root": str(tmp_path), "data_format": "lpba40", "dataset_dir": str(tmp_path / "lpba40")}
    messages = assert_fails(r"data_files\.json", bundle_configs.train, **overrides)
    assert "lpba40" in messages
    assert not (tmp_path / "runs").exists()  # refused before any epoch


def test_checkpoint_of_another_network_fails_at_once(
    tmp_path, tiny_cache, bundle_configs, tiny_overrides, assert_fails
):
    os.makedirs(tmp_path / "models")
    other = SACBNetBackbone(base_channels=2)
    torch.save({"model": other.state_dict()}, tmp_path / "models" / "checkpoint_epoch=3.pt")
    assert_fails("was not saved from this network", bundle_configs.tiny_train, **tiny_overrides(tmp_path, tiny_cache))
    # inference with a wrong --ckpt_path, and with none
    torch.save(other.state_dict(), tmp_path / "other.pt")
    other_ckpt = str(tmp_path / "other.pt")
    inference = bundle_configs.inference
    assert_fails("was not saved from this network", inference, "infer", bundle_root=str(tmp_path), ckpt_path=other_ckpt)
    assert_fails("checkpoint not found", inference, "infer", bundle_root=str(tmp_path / "empty"))


def test_main_job_data_trains_and_validates_on_held_out_anatomy(tmp_path, bundle_configs, tiny_overrides, run_bundle):
    """The main job's data format (train.json alone: synth) at 8 mm: label-synthesised training pairs, held-out
    validation pairs."""
    root = tmp_path / "bundle"
    overrides = tiny_overrides(root, tmp_path / "cache", max_epochs=1, num_samples=2, ckpt_dir=str(root / "runs"))
    workflow = run_bundle(bundle_configs.train, **overrides)
    assert workflow.parser["data_format"] == "synth"
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    assert set(metrics) >= {"val_mean_dice", "val_identity_dice", "val_folding_percent", "val_sd_log_jacobian"}
    assert 0.0 < metrics["val_identity_dice"] < 1.0
    assert (root / "runs" / "model.pt").is_file() and (root / "runs" / "checkpoint_epoch=1.pt").is_file()
    assert not (root / "models").exists()  # the shipped model's folder is never written by training


def test_label_and_zero_motion_losses_train_on_the_synthesised_pairs(
    tmp_path, bundle_configs, tiny_overrides, run_bundle
):
    """--label_weight adds the soft Dice of the warped training label maps; --similarity_weight 0 leaves it alone;
    --zero_motion_weight penalises the motion of pairs that share one deformation (flagged by RandLabelSynthPaird;
    here every pair is one)."""
    root = tmp_path / "bundle"
    overrides = tiny_overrides(root, tmp_path / "cache", max_epochs=1, num_samples=2, ckpt_dir=str(root / "runs"))
    overrides["train#preprocessing#transforms#1#same_geometry_prob"] = 1.0
    workflow = run_bundle(
        bundle_configs.train, similarity_weight=0.0, label_weight=1.0, zero_motion_weight=1.0, **overrides
    )
    loss = workflow.parser.get_parsed_content("loss")
    assert set(loss.last_terms) == {"label", "zero_motion", "regularization", "loss"}
    assert 0.0 < loss.last_terms["label"].item() < 1.0
    assert loss.last_terms["zero_motion"].item() > 0.0
    target_key = workflow.parser.get_parsed_content("train#prepare_batch").target_key
    assert target_key == ["fixed_image", "moving_label", "fixed_label", "same_geometry"]
    assert (root / "runs" / "model.pt").is_file()


@pytest.mark.parametrize("extra", [None, "data_default", "data_files"])
def test_every_training_pipeline_has_the_random_field_of_view(extra, tmp_path, bundle_configs, workflow_of):
    """--rand_pad_prob reaches the training transforms of each data pipeline (off by default: the main job as before)."""
    from monai.transforms import Compose

    from monai_sacb.transforms import RandDivisiblePadd

    config = bundle_configs.train if extra is None else [bundle_configs.train, getattr(bundle_configs, extra)]
    for prob in (None, 0.25):
        overrides = {} if prob is None else {"rand_pad_prob": prob}
        workflow = workflow_of(config, "train", bundle_root=str(tmp_path), **overrides)
        preprocessing = workflow.parser.get_parsed_content("train#preprocessing")

        def flatten(transform):
            if not isinstance(transform, Compose):
                return [transform]
            return [t for inner in transform.transforms for t in flatten(inner)]

        pads = [t for t in flatten(preprocessing) if isinstance(t, RandDivisiblePadd)]
        assert len(pads) == 1 and pads[0].prob == (0.0 if prob is None else prob)
        assert set(pads[0].keys) == {"moving_image", "fixed_image", "moving_label", "fixed_label"}


def test_training_with_a_random_field_of_view(tmp_path, tiny_cache, bundle_configs, tiny_overrides, run_bundle):
    """--rand_pad_prob 1 trains on pairs padded with background by multiples of 16 voxels (32^3 tiny data)."""
    root = tmp_path / "bundle"
    overrides = tiny_overrides(root, tiny_cache, max_epochs=1, num_samples=4, rand_pad_prob=1.0)
    shapes = []

    def remember(engine):
        shapes.append(tuple(engine.state.batch["fixed_image"].shape[2:]))

    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = ConfigWorkflow(
            config_file=bundle_configs.tiny_train, meta_file=bundle_configs.meta, workflow_type="train", **overrides
        )
        workflow.initialize()
        workflow.parser.get_parsed_content("train#trainer").add_event_handler(Events.ITERATION_COMPLETED, remember)
        workflow.run()
        workflow.finalize()
    assert len(shapes) == 4 and all(set(s) <= {32, 48, 64} for s in shapes)
    assert any(s != (32, 32, 32) for s in shapes)  # seeded: the drawn pads are the same on every run
    assert (root / "models" / "model.pt").is_file()


def test_every_inferer_crops_to_the_foreground_unless_told_not_to(tmp_path, bundle_configs, workflow_of):
    """--crop_foreground reaches the validation (default off) and inference (default on) inferers; training registers
    whole grids (so that --rand_pad_prob's background reaches the network)."""
    cases = [({}, False, False), ({"rand_pad_prob": 0.5}, False, False), ({"crop_foreground": True}, False, True)]
    for overrides, train_crops, validation_crops in cases:
        workflow = workflow_of(bundle_configs.train, "train", bundle_root=str(tmp_path), **overrides)
        assert workflow.parser.get_parsed_content("train#inferer").crop_foreground is train_crops
        assert workflow.parser.get_parsed_content("validate#inferer").crop_foreground is validation_crops
    for config in (bundle_configs.inference, str(bundle_configs.root / "configs" / "evaluate.json")):
        for value in (True, False):
            overrides = {} if value else {"crop_foreground": False}
            workflow = workflow_of(config, "infer", bundle_root=str(tmp_path), **overrides)
            assert workflow.parser.get_parsed_content("inferer").crop_foreground is value


@pytest.mark.parametrize("deterministic", [False, True])
def test_training_on_the_cpu_repeats_bit_for_bit(
    deterministic, tmp_path, tiny_cache, bundle_configs, tiny_overrides, run_bundle, monkeypatch
):
    """Two runs of the same command give the same weights bit for bit on the CPU, by default and with
    ``--deterministic True``, which also turns on torch.use_deterministic_algorithms and sets cuBLAS's workspace
    (what makes GPU training repeatable, bundle/docs/README.md); the default leaves both alone."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    previous = torch.are_deterministic_algorithms_enabled()
    weights = []
    try:
        torch.use_deterministic_algorithms(False)
        for run in ("first", "second"):
            overrides = tiny_overrides(tmp_path / run, tiny_cache, max_epochs=1, deterministic=deterministic)
            run_bundle(bundle_configs.tiny_train, **overrides)
            assert torch.are_deterministic_algorithms_enabled() == deterministic
            assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (":4096:8" if deterministic else None)
            weights.append(torch.load(tmp_path / run / "models" / "model.pt", weights_only=True))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
