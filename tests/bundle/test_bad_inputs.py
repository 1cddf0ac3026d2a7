# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Bad input reaching the bundle is refused where it enters, with a message naming the file and the fix."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest

SHAPE = (30, 28, 34)
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
AFFINE[:3, 3] = [-20.0, 10.0, 5.0]


def _image(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    image[5:25, 6:22, 8:28] = rng.uniform(0.5, 1.0, size=(20, 16, 20))
    return image


def _label(shape=SHAPE):
    label = np.zeros(shape, np.int16)
    label[5:15, 6:22, 8:28], label[15:25, 6:22, 8:28] = 1, 2
    return label


def _write(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


@pytest.fixture
def pair_files(tmp_path):
    return {
        "moving_image": _write(tmp_path / "mov.nii.gz", _image(0)),
        "fixed_image": _write(tmp_path / "fix.nii.gz", _image(1)),
        "moving_label": _write(tmp_path / "mov_seg.nii.gz", _label()),
    }


@pytest.fixture
def fails(run_bundle, error_chain):
    """``fails(config_file, workflow_type="train", **overrides) -> str``: run the workflow, expect it to fail, and
    return every message along the exception chain."""

    def run(config_file, workflow_type="train", **overrides) -> str:
        with pytest.raises(Exception) as info:
            run_bundle(config_file, workflow_type, **overrides)
        return error_chain(info)

    return run


@pytest.fixture
def infer_fails(fails, bundle_configs, trained_root, tmp_path):
    """``infer_fails(pair) -> str``: inference of ``pair`` with the tiny trained network fails and writes nothing;
    returns the messages."""

    def run(pair) -> str:
        out = tmp_path / "out"
        overrides = {"bundle_root": str(trained_root), "output_dir": str(out), "network_def#kmeans_iters": 3}
        message = fails(bundle_configs.inference, "infer", **overrides, **pair)
        assert not out.exists() or not list(out.glob("*.nii.gz"))  # nothing written for a refused pair
        return message

    return run


# ------------------------------------------------------------------------- issue 9.3: labels vs their own image


def test_label_far_from_its_image_is_refused(infer_fails, tmp_path, pair_files):
    far = AFFINE.copy()
    far[:3, 3] += (1000.0, 0.0, 0.0)
    pair_files["moving_label"] = _write(tmp_path / "far_seg.nii.gz", _label(), far)
    message = infer_fails(pair_files)
    assert re.search(r"moving_label \('.*far_seg\.nii\.gz'\) is not on the grid of its image moving_image", message)
    assert "up to 1000.0 mm" in message and "overlap 0 %" in message and "mov.nii.gz" in message


def test_label_of_another_shape_is_refused(infer_fails, tmp_path, pair_files):
    pair_files["moving_label"] = _write(tmp_path / "small_seg.nii.gz", _label((30, 28, 33)))
    message = infer_fails(pair_files)
    assert re.search(
        r"moving_label \('.*small_seg\.nii\.gz'\) has spatial shape \(30, 28, 33\) but its image moving_image "
        r"\('.*mov\.nii\.gz'\) has \(30, 28, 34\); labels are checked before any resampling",
        message,
    ), message


def test_intensity_image_given_as_label_is_refused(infer_fails, tmp_path, pair_files):
    pair_files["moving_label"] = _write(tmp_path / "not_seg.nii.gz", _image(2))
    message = infer_fails(pair_files)
    assert re.search(r"moving_label \('.*not_seg\.nii\.gz'\) is not a label map: \d+ of its 28560 voxels", message)


# ---------------------------------------------------------------------- issue 9.4: validation data without labels


def test_training_without_validation_labels_fails_before_the_first_epoch(
    tmp_path, tiny_cache, fails, bundle_configs, tiny_overrides
):
    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        _write(data / f"subject_{i}.nii.gz", _image(i, (32, 32, 32)), np.eye(4))
    overrides = tiny_overrides(tmp_path, tiny_cache, data_format="folder", dataset_dir=str(data))
    message = fails([bundle_configs.train, bundle_configs.data_files], **overrides)
    assert re.search(r"2 of the 2 validation pairs of data format 'folder' in '.*images' have no label maps", message)
    assert "labels/ folder" in message and "val_mean_dice" in message
    assert "To train on images without label maps, skip validation: --val_interval 0" in message
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())  # no epoch ran


def test_training_without_labels_and_without_validation_leaves_the_latest_network(
    tmp_path, tiny_cache, run_bundle, bundle_configs, tiny_overrides, capsys
):
    """The fix the message above names: --val_interval 0 trains on images without label maps; model.pt is the
    network of the last epoch."""
    import torch

    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        _write(data / f"subject_{i}.nii.gz", _image(i, (32, 32, 32)), np.eye(4))
    overrides = tiny_overrides(
        tmp_path, tiny_cache, data_format="folder", dataset_dir=str(data), val_interval=0, rand_pad_prob=1.0
    )
    capsys.readouterr()
    workflow = run_bundle([bundle_configs.train, bundle_configs.data_files], **overrides)
    out = capsys.readouterr().out
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 2 * 6  # 3 images: 6 ordered pairs per epoch
    assert "val_mean_dice" not in out and "Saved" in out
    assert "the network of epoch 2 (no validation: the latest network)" in out
    checkpoint = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(model[k], v) for k, v in checkpoint["model"].items())
    assert checkpoint["key_metric"]["best_epoch"] is None and checkpoint["key_metric"]["history"] == []
    # stopped between the last checkpoint and model.pt: the same command again restores model.pt from the checkpoint
    torch.save({k: torch.zeros_like(v) for k, v in model.items()}, tmp_path / "models" / "model.pt")
    run_bundle([bundle_configs.train, bundle_configs.data_files], **overrides)
    assert "restored from" in capsys.readouterr().out
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(model[k], v) for k, v in checkpoint["model"].items())


# ------------------------------------------------------------------------------ issue 9.5: files the net can't take


def test_2d_file_is_refused_by_name(infer_fails, tmp_path, pair_files):
    pair_files["moving_image"] = _write(tmp_path / "slice.nii.gz", _image(0)[:, :, 10])
    message = infer_fails(pair_files)
    expected = r"moving_image \('.*slice\.nii\.gz'\) is 2D \(file shape \(30, 28\), read as \(1, 30, 28\)"
    assert re.search(expected, message), message
    assert "registers 3D images" in message


def test_4d_file_is_refused_by_name(infer_fails, tmp_path, pair_files):
    series = np.stack([_image(i) for i in range(3)], axis=-1)
    pair_files["fixed_image"] = _write(tmp_path / "series.nii.gz", series)
    message = infer_fails(pair_files)
    assert re.search(r"fixed_image \('.*series\.nii\.gz'\) has 3 channels \(file shape \(30, 28, 34, 3\)", message)
    assert "4D file" in message and "keep one volume" in message


def test_nan_voxels_are_counted_in_the_file(infer_fails, tmp_path, pair_files):
    image = _image(0)
    image[10:13, 10:13, 12] = np.nan  # 9 voxels: the count must not be what intensity scaling spreads them to
    pair_files["moving_image"] = _write(tmp_path / "nan.nii.gz", image)
    message = infer_fails(pair_files)
    assert re.search(r"moving_image \('.*nan\.nii\.gz'\) has 9 NaN or infinite voxel values in the file", message)


def test_json_syntax_error_names_the_file(tmp_path, tiny_cache, fails, bundle_configs, tiny_overrides):
    datalist = tmp_path / "pairs.json"
    datalist.write_text('{"training": [\n  {"moving_image": "a.nii.gz", "fixed_image": "b.nii.gz"},\n]}\n')
    overrides = tiny_overrides(tmp_path, tiny_cache, data_format="json", dataset_dir=str(datalist))
    message = fails([bundle_configs.train, bundle_configs.data_files], **overrides)
    assert re.search(r"JSON datalist .*pairs\.json is not valid JSON: .* at line 3, column 1", message), message


def test_a_lower_case_false_on_the_command_line_is_refused(tmp_path, tiny_cache, fails, bundle_configs, tiny_overrides):
    """``--amp false`` reaches the config as the truthy string "false": refused before anything runs or is written,
    in every config."""
    overrides = tiny_overrides(tmp_path, tiny_cache, amp="false", deterministic="False")
    message = fails(bundle_configs.tiny_train, **overrides)
    assert "--amp 'false' (str), --deterministic 'False' (str): these options take True or False" in message, message
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
    for config in (bundle_configs.inference, str(bundle_configs.root / "configs" / "evaluate.json")):
        message = fails(config, "infer", bundle_root=str(tmp_path), symmetric="false")
        assert "--symmetric 'false' (str): this option takes True or False" in message, message


@pytest.mark.parametrize(
    "override, message",
    [
        ({"learning_rate": "1e-4x"}, "--learning_rate '1e-4x' (str): this option takes a number >= 0."),
        ({"num_samples": -1}, "--num_samples -1 (int): this option takes a whole number >= 1."),
        ({"max_epochs": 1.5, "num_val_pairs": -2}, None),
    ],
)
def test_numeric_options_of_the_wrong_type_or_range_are_refused(
    override, message, tmp_path, tiny_cache, fails, bundle_configs, tiny_overrides
):
    """A typo in a number arrives as text, and a negative count emptied the training list (with a message about
    --dataset_dir): both refused before anything runs, naming the option."""
    overrides = tiny_overrides(tmp_path, tiny_cache, **override)
    messages = fails(bundle_configs.tiny_train, **overrides)
    if message is None:  # two checks: the first one that fails names its option
        assert "--max_epochs 1.5 (float): this option takes a whole number >= 1." in messages, messages
    else:
        assert message in messages, messages
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


def test_an_output_folder_below_a_file_is_refused_before_anything_runs(
    tmp_path, tiny_cache, fails, bundle_configs, tiny_overrides, trained_root, pair_files
):
    """Inference had registered its first pair before it failed to save it, with a stack trace from MONAI's saver;
    training stopped inside the checkpoint handler. Every config now names the folder option first."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    below_file = str(blocker / "out")
    overrides = tiny_overrides(tmp_path, tiny_cache, ckpt_dir=below_file)
    message = fails(bundle_configs.tiny_train, **overrides)
    assert f"--ckpt_dir '{below_file}' ({blocker} is a file, not a folder): give a folder" in message, message
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
    inference = {"bundle_root": str(trained_root), "output_dir": below_file, **pair_files}
    message = fails(bundle_configs.inference, "infer", **inference)
    assert f"--output_dir '{below_file}' ({blocker} is a file, not a folder)" in message, message
    evaluate = str(bundle_configs.root / "configs" / "evaluate.json")
    message = fails(evaluate, "infer", bundle_root=str(tmp_path), figures_dir=below_file)
    assert f"--figures_dir '{below_file}' ({blocker} is a file, not a folder)" in message, message
