# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from monai_sacb.handlers import latest_checkpoint


def test_multi_gpu_override_with_torchrun_gloo(tmp_path, tiny_cache, bundle_configs, tiny_overrides, trained_root):
    """The Model Zoo multi-GPU override, run on CPU: torchrun with 2 processes, gloo backend, DDP, DistributedSampler;
    fine-tuning from pretrained weights (at learning rate 0, so that they must come out unchanged); with
    --deterministic True, which the override's own initialize must pass on."""
    pretrained = trained_root / "models" / "model.pt"
    overrides = tiny_overrides(
        tmp_path, tiny_cache, max_epochs=1, num_samples=4, pretrained_ckpt=str(pretrained), learning_rate=0.0,
        deterministic=True,
    )
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str([*bundle_configs.tiny_train, bundle_configs.multi_gpu]),
        *args,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpt = latest_checkpoint(tmp_path / "models")
    assert ckpt is not None and ckpt.endswith("checkpoint_epoch=1.pt")
    state = torch.load(ckpt, weights_only=True)
    # 4 samples over 2 processes: 2 iterations each; the saved network has no DDP "module." prefix
    assert state["trainer"]["iteration"] == 2
    assert not any(k.startswith("module.") for k in state["model"])
    assert (tmp_path / "models" / "model.pt").is_file()
    # rank 0 alone commits the validation (gathered over both ranks) and writes model.pt from it
    assert state["key_metric"]["best_epoch"] == 1 and len(state["key_metric"]["history"]) == 1
    best = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(best[k], v) for k, v in state["model"].items())
    start = torch.load(pretrained, weights_only=True)
    assert set(start) == set(state["model"]) and all(torch.equal(state["model"][k], v) for k, v in start.items())
    assert not list((tmp_path / "models").glob(".*.tmp"))


def test_multi_gpu_override_without_validation(tmp_path, tiny_cache, bundle_configs, tiny_overrides):
    """--val_interval 0 under torchrun: the empty validation set builds its DistributedSampler (MONAI refuses an
    uneven one with fewer items than ranks), no validation runs, and model.pt is the latest network."""
    overrides = tiny_overrides(tmp_path, tiny_cache, max_epochs=1, num_samples=4, val_interval=0)
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", str([*bundle_configs.tiny_train, bundle_configs.multi_gpu]),
        *args,
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "val_mean_dice" not in result.stdout + result.stderr
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 and state["key_metric"]["history"] == []
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(model[k], v) for k, v in state["model"].items())



def test_multi_gpu_override_outside_torchrun_names_the_command(tmp_path, tiny_cache, bundle_configs, tiny_overrides,
                                                                run_bundle, error_chain, monkeypatch):
    """Started without torchrun, the override fails before any process group or data, saying how to start it."""
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Exception) as info:
        run_bundle([*bundle_configs.tiny_train, bundle_configs.multi_gpu], **tiny_overrides(tmp_path, tiny_cache))
    message = error_chain(info)
    assert "runs one process per GPU under torchrun" in message and "--nproc_per_node=N" in message
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
