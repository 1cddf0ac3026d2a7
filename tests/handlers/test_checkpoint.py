# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Unit tests of the crash-safe checkpoint handlers and helpers (whole training runs: tests/bundle/test_resume.py)."""

from __future__ import annotations

import os

import pytest
import torch

import monai_sacb.handlers.checkpoint as checkpoint_module
from monai_sacb.handlers import (
    BestMetricTracker,
    CheckedCheckpointLoader,
    TrainerCheckpointSaver,
    atomic_save,
    check_checkpoint_compatible,
    find_resumable_checkpoint,
    latest_checkpoint,
    network_state_dict,
)
from monai_sacb.networks import SACBNetBackbone


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
    os.chmod(path, 0o600)  # replacing a file keeps its permissions, as a plain write would
    atomic_save({"x": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.zeros(3))
    assert path.stat().st_mode & 0o777 == 0o600


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


def test_saver_without_validation_writes_the_latest_network_as_model_pt(tmp_path):
    from ignite.engine import Engine

    net = torch.nn.Linear(2, 1)

    def step(engine, batch):
        with torch.no_grad():
            net.weight.add_(1.0)

    trainer = Engine(step)
    TrainerCheckpointSaver(tmp_path, {"model": net}, best_tracker=BestMetricTracker(), save_latest_model=True).attach(
        trainer
    )
    trainer.run([0, 1], max_epochs=3)  # the tracker never sees a validation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=3.pt", "model.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight.detach())
    with pytest.raises(ValueError, match="needs the network under 'model'"):
        TrainerCheckpointSaver(tmp_path, {"net": net}, save_latest_model=True)


@pytest.mark.parametrize("latest_model", [True, False])
def test_resume_without_validation_restores_the_latest_network_as_model_pt(tmp_path, latest_model):
    """A run without validation stopped between its last checkpoint and model.pt: resuming rewrites model.pt."""
    from ignite.engine import Engine

    from monai_sacb.handlers import ResumeFromLatest

    def trainer_of(net):
        def step(engine, batch):
            with torch.no_grad():
                net.weight.add_(1.0)

        return Engine(step)

    net = torch.nn.Linear(2, 1)
    trainer = trainer_of(net)
    TrainerCheckpointSaver(tmp_path, {"model": net}, save_latest_model=True).attach(trainer)
    trainer.run([0, 1], max_epochs=1)
    stale = torch.load(tmp_path / "model.pt", weights_only=True)
    trainer.run([0, 1], max_epochs=2)
    last = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(stale, tmp_path / "model.pt")  # as if the run had stopped before writing model.pt in epoch 2

    fresh = torch.nn.Linear(2, 1)
    resumed = trainer_of(fresh)
    ResumeFromLatest(tmp_path, {"model": fresh}, latest_model=latest_model).attach(resumed)
    resumed.run([0, 1], max_epochs=2)  # nothing left to train: only the resume
    assert torch.equal(fresh.weight, last["weight"])
    model_pt = torch.load(tmp_path / "model.pt", weights_only=True)
    expected = last if latest_model else stale  # without latest_model, only a best validated epoch is restored
    assert all(torch.equal(model_pt[k], expected[k]) for k in expected)


def test_latest_checkpoint_by_epoch_number(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for epoch in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={epoch}.pt").touch()
    (tmp_path / "model.pt").touch()
    assert latest_checkpoint(tmp_path) == os.path.join(str(tmp_path), "checkpoint_epoch=10.pt")


def test_network_state_dict_reads_plain_and_wrapped_checkpoints():
    weights = {"w": torch.ones(1)}
    assert network_state_dict(weights) is weights
    assert network_state_dict({"model": weights, "trainer": {}}) is weights
    with pytest.raises(ValueError, match="no network weights under 'model'"):
        network_state_dict({"trainer": {"epoch": 1}})


def test_checkpoint_compatibility_message():
    net = SACBNetBackbone(base_channels=4)
    check_checkpoint_compatible({"model": net.state_dict()}, net)
    check_checkpoint_compatible(SACBNetBackbone(num_clusters=5).state_dict(), net)  # clusters do not change weights
    with pytest.raises(ValueError, match=r"model\.pt was not saved from this network.*other shape"):
        check_checkpoint_compatible(SACBNetBackbone(base_channels=2).state_dict(), net, "model.pt")
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        check_checkpoint_compatible({"model": {"conv.weight": torch.zeros(1)}}, net)


def test_checked_loader_fails_when_built_on_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nothing\.pt; train the bundle first"):
        CheckedCheckpointLoader(str(tmp_path / "nothing.pt"), {"model": torch.nn.Linear(1, 1)})
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other shape"):
        CheckedCheckpointLoader(str(tmp_path / "other.pt"), {"model": torch.nn.Linear(1, 1)})


def test_unreadable_checkpoint_for_inference_says_what_to_do(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*model\.pt: .*truncated, empty .*--ckpt_path"):
        CheckedCheckpointLoader(str(tmp_path / "model.pt"), {"model": SACBNetBackbone()})
