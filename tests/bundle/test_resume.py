# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Resuming train.json runs (tiny default data); the checkpoint handlers alone: tests/handlers/test_checkpoint.py."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch



@pytest.fixture
def train(bundle_configs, run_bundle, tiny_overrides, tiny_cache, tmp_path):
    """``train(**overrides)``: a tiny training run in ``tmp_path`` (models in ``tmp_path / "models"``)."""

    def run(**overrides):
        return run_bundle(bundle_configs.tiny_train, **tiny_overrides(tmp_path, tiny_cache, **overrides))

    return run


def _models_of(trained_root, tmp_path):
    shutil.copytree(trained_root / "models", tmp_path / "models")
    return tmp_path / "models"


def test_longer_training_continues_the_schedule(tmp_path, trained_root, train, capsys):
    """Repro of issue 9.1: 1 epoch, then the same command with max_epochs 3 (and a new learning rate and epoch
    length)."""
    ckpt_dir = _models_of(trained_root, tmp_path)
    before = torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=True)
    assert before["lr_scheduler"]["total_iters"] == 1 and before["optimizer"]["param_groups"][0]["lr"] == 0.0
    capsys.readouterr()
    workflow = train(max_epochs=3, learning_rate=2e-4, num_samples=3)
    out = capsys.readouterr().out
    expected = [2e-4 * (1 - e / 3) ** 0.9 for e in (1, 2, 3)]
    assert re.search(
        r"learning rate schedule PolynomialLR over 3 epochs \(the checkpoint's schedule had 1\): after epoch 1 "
        rf"the learning rate is {expected[0]:.6g} \(base 0\.0002\)",
        out,
    ), out[-3000:]
    logged = [float(v) for v in re.findall(r"Current learning rate: ([0-9.e-]+)", out)]
    assert logged == pytest.approx(expected[1:], rel=1e-6, abs=1e-12)  # after epochs 2 and 3 (the last: 0)
    assert "the checkpoint's epochs had 2 iterations, this run's have 3: 1 epochs done, counted as iteration 3" in out
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert (trainer.state.epoch, trainer.state.iteration) == (3, 9)
    after = torch.load(ckpt_dir / "checkpoint_epoch=3.pt", weights_only=True)
    assert after["lr_scheduler"]["total_iters"] == 3
    assert after["trainer"]["iteration"] // after["trainer"]["epoch_length"] == 3  # what a later resume reads
    changed = [k for k, v in before["model"].items() if not torch.equal(v, after["model"][k])]
    assert len(changed) > len(before["model"]) // 2  # it trained (at learning rate 0 nothing would change)
    assert [e for e, _ in after["key_metric"]["history"]] == [1, 2, 3]


def test_fewer_epochs_than_done_are_refused(tmp_path, trained_root, train, error_chain):
    ckpt_dir = _models_of(trained_root, tmp_path)
    checkpoint = torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=True)
    checkpoint["trainer"]["iteration"] = 4  # as if 2 epochs were done
    torch.save(checkpoint, ckpt_dir / "checkpoint_epoch=2.pt")
    with pytest.raises(Exception) as info:
        train(max_epochs=1)
    expected = r"checkpoint_epoch=2\.pt has 2 epochs done, more than max_epochs=1: pass --max_epochs 2"
    assert re.search(expected, error_chain(info))


def test_model_pt_is_restored_when_the_run_stopped_before_it(tmp_path, trained_root, train, capsys):
    ckpt_dir = _models_of(trained_root, tmp_path)
    checkpoint = torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=True)
    assert checkpoint["key_metric"]["best_epoch"] == 1
    (ckpt_dir / "model.pt").unlink()  # killed after the checkpoint, before model.pt
    capsys.readouterr()
    train(max_epochs=1)  # nothing left to train
    assert "model.pt restored from" in capsys.readouterr().out
    restored = torch.load(ckpt_dir / "model.pt", weights_only=True)
    assert all(torch.equal(restored[k], v) for k, v in checkpoint["model"].items())


def test_damaged_newer_checkpoint_is_skipped_and_reported(tmp_path, trained_root, train, capsys):
    ckpt_dir = _models_of(trained_root, tmp_path)
    (ckpt_dir / "checkpoint_epoch=2.pt").write_bytes(b"")
    (ckpt_dir / ".checkpoint_epoch=2.pt.123.abcd1234.tmp").write_bytes(b"half")
    capsys.readouterr()
    workflow = train(max_epochs=2)
    out = capsys.readouterr().out
    assert re.search(r"skipping checkpoint .*checkpoint_epoch=2\.pt: unreadable", out), out[-3000:]
    assert "removed 1 temporary files of an interrupted write" in out
    assert re.search(r"resumed from .*checkpoint_epoch=1\.pt: epoch 1 of 2 done", out)
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 4
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint_epoch=2.pt", "model.pt"]
    assert torch.load(ckpt_dir / "checkpoint_epoch=2.pt", weights_only=True)["trainer"]["iteration"] == 4


def test_model_pt_without_checkpoint_is_not_overwritten_silently(tmp_path, trained_root, train, error_chain):
    os.makedirs(tmp_path / "models")
    shutil.copy(trained_root / "models" / "model.pt", tmp_path / "models" / "model.pt")
    (tmp_path / "models" / "checkpoint_epoch=2.pt").write_bytes(b"")  # as the non-atomic saver could leave
    with pytest.raises(Exception) as info:
        train(max_epochs=1)
    message = error_chain(info)
    assert "model.pt exists but there is no complete checkpoint_epoch=*.pt" in message
    assert "checkpoint_epoch=2.pt: unreadable" in message and "--resume False" in message
    original = torch.load(trained_root / "models" / "model.pt", weights_only=True)
    kept = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(kept[k], v) for k, v in original.items())
    train(max_epochs=1, resume=False)  # the explicit way
    assert (tmp_path / "models" / "checkpoint_epoch=1.pt").is_file()
    assert not (tmp_path / "models" / "checkpoint_epoch=2.pt").exists()  # the damaged file is gone



def test_pretrained_weights_start_a_run_and_a_rerun_resumes_it(tmp_path, trained_root, train, capsys):
    """--pretrained_ckpt: the network starts from those weights (at learning rate 0 it keeps them exactly), without
    the self-estimate ramp; the same command again resumes the run's own checkpoint instead of reloading them."""
    pretrained = trained_root / "models" / "model.pt"
    weights = torch.load(pretrained, weights_only=True)
    capsys.readouterr()
    workflow = train(max_epochs=1, learning_rate=0.0, pretrained_ckpt=str(pretrained))
    out = capsys.readouterr().out
    assert f"training from the network weights of {pretrained}" in out and "network weights loaded from" in out
    assert workflow.parser.get_parsed_content("self_estimate_warmup") == 0
    saved = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)["model"]
    assert set(saved) == set(weights) and all(torch.equal(saved[k], v) for k, v in weights.items())

    train(max_epochs=2, learning_rate=2e-4, pretrained_ckpt=str(pretrained))
    out = capsys.readouterr().out
    assert re.search(r"resuming from .*checkpoint_epoch=1\.pt: the pretrained weights .* only start a run", out)
    assert re.search(r"resumed from .*checkpoint_epoch=1\.pt: epoch 1 of 2 done", out)
    assert "network weights loaded from" not in out


def test_without_pretrained_weights_training_starts_from_random_ones(tmp_path, trained_root, train, capsys):
    capsys.readouterr()
    workflow = train(max_epochs=1, learning_rate=0.0, pretrained_ckpt="")  # "" as well as None: none
    assert "training from scratch" in capsys.readouterr().out
    assert workflow.parser.get_parsed_content("self_estimate_warmup") == 40
    saved = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)["model"]
    weights = torch.load(trained_root / "models" / "model.pt", weights_only=True)
    assert not all(torch.equal(saved[k], v) for k, v in weights.items())


def test_missing_or_foreign_pretrained_weights_are_refused(tmp_path, train, error_chain):
    with pytest.raises(Exception) as info:
        train(max_epochs=1, pretrained_ckpt=str(tmp_path / "nowhere.pt"))
    assert "pretrained weights not found" in error_chain(info) and "bundle's models/model.pt" in error_chain(info)
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.nn.Linear(2, 3).state_dict(), foreign)
    with pytest.raises(Exception) as info:
        train(max_epochs=1, pretrained_ckpt=str(foreign))
    assert f"checkpoint {foreign} was not saved from this network" in error_chain(info)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception) as info:
        train(max_epochs=1, pretrained_ckpt=str(damaged))
    assert f"cannot read checkpoint {damaged}" in error_chain(info) and "another --pretrained_ckpt" in error_chain(info)
    optimizer_only = tmp_path / "optimizer_only.pt"
    torch.save({"optimizer": {"state": {}}}, optimizer_only)
    with pytest.raises(Exception) as info:
        train(max_epochs=1, pretrained_ckpt=str(optimizer_only))
    assert f"pretrained weights {optimizer_only}: no network weights under 'model'" in error_chain(info)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").glob("*.pt"))
