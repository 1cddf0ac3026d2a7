# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Crash-safe checkpoints and resume: the pieces on their own, then the bundle's train.json (tiny default data)."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch

import monai_sacb.engines.checkpoint as checkpoint_module
from monai_sacb.engines import BestMetricTracker, TrainerCheckpointSaver, atomic_save, find_resumable_checkpoint
from tests.bundle.conftest import TRAIN, run_workflow, tiny_overrides

# ---------------------------------------------------------------------------------------------------- atomic_save


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_epoch=1.pt"
    atomic_save({"x": torch.ones(3)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any new file, not owner-only as tempfile's
    real_save = torch.save

    def fail_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))  # the old file, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    atomic_save({"x": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.zeros(3))


def test_find_resumable_checkpoint_skips_damaged_and_partial_files(tmp_path):
    good = {"model": {"w": torch.ones(2)}, "trainer": {"iteration": 2, "epoch_length": 2, "max_epochs": 5}}
    torch.save(good, tmp_path / "checkpoint_epoch=1.pt")
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"")  # what a kill during a plain torch.save leaves
    torch.save(good, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(data[: len(data) // 2])  # truncated
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "checkpoint_epoch=4.pt")  # no trainer state
    path, checkpoint, skipped = find_resumable_checkpoint(tmp_path)
    assert path == str(tmp_path / "checkpoint_epoch=1.pt")
    assert checkpoint["trainer"]["iteration"] == 2
    reasons = {os.path.basename(p): r for p, r in skipped}
    assert list(reasons) == ["checkpoint_epoch=4.pt", "checkpoint_epoch=3.pt", "checkpoint_epoch=2.pt"]
    assert reasons["checkpoint_epoch=4.pt"].startswith("partial: it has no ['trainer']")
    assert reasons["checkpoint_epoch=3.pt"].startswith("unreadable")
    assert reasons["checkpoint_epoch=2.pt"].startswith("unreadable")
    assert find_resumable_checkpoint(tmp_path / "missing") == (None, None, [])
    # a readable checkpoint of another network is a user error, not damage to step over
    torch.save({"model": {"other": torch.ones(1)}, "trainer": {}}, tmp_path / "checkpoint_epoch=5.pt")
    with pytest.raises(ValueError, match=r"checkpoint_epoch=5\.pt was not saved from this network"):
        find_resumable_checkpoint(tmp_path, network=torch.nn.Linear(1, 1))


# ------------------------------------------------------------------------------------------------ the best record


def test_best_metric_tracker_commits_strictly_better_finite_values():
    tracker = BestMetricTracker()
    assert not tracker.commit(1)  # no validation noted
    steps = [(1, 0.5, True), (2, 0.7, True), (3, 0.7, False), (4, float("nan"), False), (5, 0.8, True)]
    for epoch, value, better in steps:
        tracker.pending = (epoch, value)
        assert not tracker.commit(epoch + 1)  # a note of another epoch is not taken
        assert tracker.commit(epoch) is better
    assert (tracker.best_metric, tracker.best_epoch) == (0.8, 5)
    assert [e for e, _ in tracker.history] == [1, 2, 3, 4, 5]
    restored = BestMetricTracker()
    restored.load_state_dict(tracker.state_dict())
    assert restored.state_dict() == tracker.state_dict()
    # a record of the earlier KeyMetricTracker (an Ignite Checkpoint state) gives the best score
    restored.load_state_dict({"saved": [(0.65, "model.pt")]})
    assert (restored.best_metric, restored.best_epoch) == (0.65, None)
    smaller = BestMetricTracker(negative_sign=True)
    smaller.pending = (1, 2.0)
    assert smaller.commit(1)
    smaller.pending = (2, 3.0)
    assert not smaller.commit(2)


def test_saver_writes_checkpoint_then_model_then_removes_older(tmp_path, monkeypatch):
    from ignite.engine import Engine, Events

    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=4, power=0.9)
    tracker = BestMetricTracker()
    metrics = {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.7}
    weights = {}

    def step(engine, batch):
        with torch.no_grad():
            net.weight.add_(1.0)

    trainer = Engine(step)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):  # what the evaluator's tracker notes after validation
        tracker.pending = (engine.state.epoch, metrics[engine.state.epoch])
        weights[engine.state.epoch] = net.weight.detach().clone()

    saver = TrainerCheckpointSaver(
        tmp_path, {"model": net, "optimizer": optimizer, "lr_scheduler": scheduler}, best_tracker=tracker
    )
    saver.attach(trainer)
    events = []
    real_save, real_remove = checkpoint_module.atomic_save, os.remove

    def save(obj, path, *args, **kwargs):
        events.append(("save", os.path.basename(path)))
        real_save(obj, path, *args, **kwargs)

    def remove(path):
        events.append(("remove", os.path.basename(path)))
        real_remove(path)

    monkeypatch.setattr(checkpoint_module, "atomic_save", save)
    monkeypatch.setattr(checkpoint_module.os, "remove", remove)
    trainer.run([0, 1], max_epochs=4)
    monkeypatch.undo()
    assert events == [
        ("save", "checkpoint_epoch=1.pt"),
        ("save", "model.pt"),
        ("save", "checkpoint_epoch=2.pt"),
        ("save", "model.pt"),
        ("remove", "checkpoint_epoch=1.pt"),
        ("save", "checkpoint_epoch=3.pt"),  # 0.6: not better, model.pt stays
        ("remove", "checkpoint_epoch=2.pt"),
        ("save", "checkpoint_epoch=4.pt"),  # 0.7: equal, not better
        ("remove", "checkpoint_epoch=3.pt"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=4.pt", "model.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], weights[2])
    saved = torch.load(tmp_path / "checkpoint_epoch=4.pt", weights_only=True)
    assert set(saved) == {"model", "optimizer", "lr_scheduler", "trainer", "key_metric"}
    history = [[1, 0.5], [2, 0.7], [3, 0.6], [4, 0.7]]
    assert saved["key_metric"] == {"best_metric": 0.7, "best_epoch": 2, "history": history}


# ------------------------------------------------------------------------------------------------- bundle runs


def _models_of(trained_root, tmp_path):
    shutil.copytree(trained_root / "models", tmp_path / "models")
    return tmp_path / "models"


def test_longer_training_continues_the_schedule(tmp_path, trained_root, tiny_cache, capsys):
    """Repro of issue 9.1: 1 epoch, then the same command with max_epochs 3 (and a new learning rate and epoch
    length)."""
    ckpt_dir = _models_of(trained_root, tmp_path)
    before = torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=True)
    assert before["lr_scheduler"]["total_iters"] == 1 and before["optimizer"]["param_groups"][0]["lr"] == 0.0
    capsys.readouterr()
    overrides = tiny_overrides(tmp_path, tiny_cache, max_epochs=3, learning_rate=2e-4, num_samples=3)
    workflow = run_workflow(TRAIN, **overrides)
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


def test_fewer_epochs_than_done_are_refused(tmp_path, trained_root, tiny_cache):
    ckpt_dir = _models_of(trained_root, tmp_path)
    checkpoint = torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=True)
    checkpoint["trainer"]["iteration"] = 4  # as if 2 epochs were done
    torch.save(checkpoint, ckpt_dir / "checkpoint_epoch=2.pt")
    with pytest.raises(Exception) as info:
        run_workflow(TRAIN, **tiny_overrides(tmp_path, tiny_cache, max_epochs=1))
    expected = r"checkpoint_epoch=2\.pt has 2 epochs done, more than max_epochs=1: pass --max_epochs 2"
    assert re.search(expected, _chain(info))


def test_model_pt_is_restored_when_the_run_stopped_before_it(tmp_path, trained_root, tiny_cache, capsys):
    ckpt_dir = _models_of(trained_root, tmp_path)
    checkpoint = torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=True)
    assert checkpoint["key_metric"]["best_epoch"] == 1
    (ckpt_dir / "model.pt").unlink()  # killed after the checkpoint, before model.pt
    capsys.readouterr()
    run_workflow(TRAIN, **tiny_overrides(tmp_path, tiny_cache, max_epochs=1))  # nothing left to train
    assert "model.pt restored from" in capsys.readouterr().out
    restored = torch.load(ckpt_dir / "model.pt", weights_only=True)
    assert all(torch.equal(restored[k], v) for k, v in checkpoint["model"].items())


def test_damaged_newer_checkpoint_is_skipped_and_reported(tmp_path, trained_root, tiny_cache, capsys):
    ckpt_dir = _models_of(trained_root, tmp_path)
    (ckpt_dir / "checkpoint_epoch=2.pt").write_bytes(b"")
    (ckpt_dir / ".checkpoint_epoch=2.pt.123.abcd1234.tmp").write_bytes(b"half")
    capsys.readouterr()
    workflow = run_workflow(TRAIN, **tiny_overrides(tmp_path, tiny_cache, max_epochs=2))
    out = capsys.readouterr().out
    assert re.search(r"skipping checkpoint .*checkpoint_epoch=2\.pt: unreadable", out), out[-3000:]
    assert "removed 1 temporary files of an interrupted write" in out
    assert re.search(r"resumed from .*checkpoint_epoch=1\.pt: epoch 1 of 2 done", out)
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 4
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint_epoch=2.pt", "model.pt"]
    assert torch.load(ckpt_dir / "checkpoint_epoch=2.pt", weights_only=True)["trainer"]["iteration"] == 4


def test_model_pt_without_checkpoint_is_not_overwritten_silently(tmp_path, trained_root, tiny_cache):
    os.makedirs(tmp_path / "models")
    shutil.copy(trained_root / "models" / "model.pt", tmp_path / "models" / "model.pt")
    (tmp_path / "models" / "checkpoint_epoch=2.pt").write_bytes(b"")  # as the non-atomic saver could leave
    with pytest.raises(Exception) as info:
        run_workflow(TRAIN, **tiny_overrides(tmp_path, tiny_cache, max_epochs=1))
    message = _chain(info)
    assert "model.pt exists but there is no complete checkpoint_epoch=*.pt" in message
    assert "checkpoint_epoch=2.pt: unreadable" in message and "--resume False" in message
    original = torch.load(trained_root / "models" / "model.pt", weights_only=True)
    kept = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(kept[k], v) for k, v in original.items())
    run_workflow(TRAIN, **tiny_overrides(tmp_path, tiny_cache, max_epochs=1, resume=False))  # the explicit way
    assert (tmp_path / "models" / "checkpoint_epoch=1.pt").is_file()
    assert not (tmp_path / "models" / "checkpoint_epoch=2.pt").exists()  # the damaged file is gone


def _chain(info) -> str:
    """All messages along an exception chain (MONAI wraps errors of the config components)."""
    error, messages = info.value, []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def test_unreadable_checkpoint_for_inference_says_what_to_do(tmp_path):
    from monai_sacb.engines import CheckedCheckpointLoader
    from monai_sacb.networks import SACBNetDDF

    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*model\.pt: .*truncated, empty .*--ckpt_path"):
        CheckedCheckpointLoader(str(tmp_path / "model.pt"), {"model": SACBNetDDF()})
