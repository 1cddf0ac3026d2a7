# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Fault injection: training processes of the bundle are killed with SIGKILL at random moments, including inside
checkpoint and model.pt writes, and restarted each time, on the tiny default data (32^3 voxels, 2 iterations and
2 validation pairs per epoch, 3 epochs). After every kill the test checks what the checkpoint folder guarantees:

- every ``checkpoint_epoch=*.pt`` on disk is complete (atomic writes);
- no committed epoch is ever lost (a kill costs at most the epoch in progress): the newest checkpoint is at least
  the newest one the killed run reported saving, and never goes back;
- the best-metric record holds one validation per committed epoch and its best is their maximum;
- ``model.pt`` is the network of that best validation (checked by validating ``model.pt`` again in this process),
  and it is only ever replaced by a better one; the one state allowed in between is a kill after the checkpoint
  and before ``model.pt``, which the next start repairs from the checkpoint (checked too);
- every round of kills and restarts ends with the same number of epochs and iterations as an uninterrupted run.

The runs are forked from a server process that has imported torch and MONAI once (``fault_zygote.py``), so a
restart costs about two seconds instead of the ten an import takes on a loaded 2-core machine. The number of
kills and the wall time are bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork"), reason="the fault-injection test forks training processes (POSIX only)"
)

KILLS = 20  # SIGKILLs that must land in running training processes
TIME_LIMIT = 360.0  # seconds for the whole test; it takes about 1.5 to 2 minutes on a loaded 2-core machine
MAX_EPOCHS = 3
ITERATIONS_PER_EPOCH = 2
FAULTS = ("checkpoint_half", "model_half", "after_checkpoint", "after_model")
ZYGOTE = Path(__file__).with_name("fault_zygote.py")
REQUIRED = {"model", "optimizer", "lr_scheduler", "trainer", "key_metric"}


class Zygote:
    """The fork server: one training process per request, killed after ``kill_after`` seconds if still running.
    Every request runs ``config_file`` with the bundle's metadata and logging config."""

    def __init__(self, config_file: list, meta_file: str, logging_file: str) -> None:
        self.files = {"config_file": config_file, "meta_file": meta_file, "logging_file": logging_file}
        env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        self.process = subprocess.Popen(
            [sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def run(self, log: Path, overrides: dict, kill_after: float | None, fault: dict | None, timeout: float) -> dict:
        request = {"log": str(log), **self.files, "overrides": overrides, "kill_after": kill_after, "fault": fault}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer from the fork server within {timeout} s (log: {log})")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server stopped (exit code {self.process.poll()})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Validator:
    """The bundle's own evaluator, built in this process, to validate model.pt independently of the runs."""

    def __init__(self, config_file: list, meta_file: str, overrides: dict) -> None:
        from monai.bundle import ConfigWorkflow

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            workflow = ConfigWorkflow(config_file=config_file, meta_file=meta_file, workflow_type="train", **overrides)
            self.evaluator = workflow.parser.get_parsed_content("validate#evaluator")
        self.network = workflow.parser.get_parsed_content("network")

    def dice(self, state_dict: dict) -> float:
        self.network.load_state_dict(state_dict)
        # one thread, like the training processes: oneDNN's float32 sums depend on the thread count in their last
        # bits, which k-means can turn into a different cluster for a few voxels and a 1e-3 different Dice
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.evaluator.run()
        finally:
            torch.set_num_threads(threads)
        return float(self.evaluator.state.metrics["val_mean_dice"])


def _digest(state_dict: dict) -> str:
    h = hashlib.sha1()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_log(path: Path) -> dict:
    """What a run reported: epochs it saved, epochs it completed, the validation Dice of each epoch, errors."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    saved = [int(m) for m in re.findall(r"Saved checkpoint at epoch: (\d+)", text)]
    completed = [int(m) for m in re.findall(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete", text)]
    dice = {int(e): float(v) for e, v in re.findall(r"Epoch\[(\d+)\] Metrics -- .*?val_mean_dice: ([0-9.]+)", text)}
    return {"text": text, "saved": saved, "completed": completed, "dice": dice}


def _folder_state(ckpt_dir: Path) -> dict:
    """Every checkpoint on disk (each must read completely), the newest one, temporary files, model.pt."""
    checkpoints = {}
    for path in sorted(ckpt_dir.glob("checkpoint_epoch=*.pt")):
        epoch = int(re.search(r"=(\d+)\.pt$", path.name).group(1))
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # the guarantee under test: never a partial checkpoint
            raise AssertionError(f"{path.name} is not a complete checkpoint: {type(error).__name__}: {error}")
        assert set(checkpoint) >= REQUIRED, (path.name, sorted(checkpoint))
        assert checkpoint["trainer"]["iteration"] == epoch * ITERATIONS_PER_EPOCH, (path.name, checkpoint["trainer"])
        checkpoints[epoch] = checkpoint
    model_path = ckpt_dir / "model.pt"
    model = torch.load(model_path, map_location="cpu", weights_only=True) if model_path.is_file() else None
    temporary = sorted(p.name for p in ckpt_dir.glob(".*.tmp")) if ckpt_dir.is_dir() else []
    newest = max(checkpoints) if checkpoints else 0
    return {"checkpoints": checkpoints, "newest": newest, "model": model, "temporary": temporary}


class Round:
    """One training run to MAX_EPOCHS in its own folder, killed and restarted until it finishes."""

    def __init__(self, root: Path, overrides: dict) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.ckpt_dir = root / "models"
        self.overrides = overrides
        self.committed = 0  # newest epoch a run reported as saved
        self.newest = 0  # newest checkpoint seen on disk
        self.best: tuple[float, str] | None = None  # (best metric, digest of model.pt) last seen
        self.repair_pending = False  # killed between a new best checkpoint and model.pt
        self.trials = 0

    def check(self, log: Path, validator: Validator, dice_cache: dict) -> dict:
        report = _read_log(log)
        state = _folder_state(self.ckpt_dir)
        newest = state["newest"]
        # nothing committed is lost, and the folder never goes back
        self.committed = max([self.committed] + report["saved"])
        assert newest >= self.committed, (newest, self.committed, log)
        assert newest >= self.newest, (newest, self.newest, log)
        assert all(epoch <= newest for epoch in report["completed"]), (report["completed"], newest)
        self.newest = newest
        if newest == 0:
            assert state["model"] is None, "model.pt written before any checkpoint"
            return state
        record = state["checkpoints"][newest]["key_metric"]
        history = dict((int(e), float(v)) for e, v in record["history"])
        # one validation per committed epoch; its best is the maximum (the first one on ties)
        assert sorted(history) == list(range(1, newest + 1)), (history, newest)
        best_value = max(history.values())
        assert record["best_metric"] == best_value, (record, history)
        assert record["best_epoch"] == min(e for e, v in history.items() if v == best_value), record
        for epoch in report["saved"]:  # the record keeps what the run validated for the epochs it committed
            if epoch in report["dice"] and epoch in history:
                assert abs(history[epoch] - report["dice"][epoch]) < 1e-4, (epoch, history[epoch], report["dice"])
        # model.pt: the best validated network, or (only right after a kill) repairable from the checkpoint
        model = state["model"]
        digest = None if model is None else _digest(model)
        if record["best_epoch"] == newest and digest != _digest(state["checkpoints"][newest]["model"]):
            # killed after the checkpoint of a new best and before model.pt: model.pt must still be the best
            # network of the earlier epochs (the next start rewrites it from the checkpoint)
            earlier = [v for e, v in history.items() if e < newest]
            if not earlier:
                assert model is None, "model.pt exists before any best epoch was committed"
            else:
                assert model is not None, "model.pt of the earlier best epochs is missing"
                if digest not in dice_cache:
                    dice_cache[digest] = validator.dice(model)
                assert abs(dice_cache[digest] - max(earlier)) < 1e-4, (dice_cache[digest], history)
            self.repair_pending = True
            return state
        assert model is not None, "model.pt is missing although its best epoch is not the newest checkpoint"
        self.repair_pending = False
        if digest not in dice_cache:
            dice_cache[digest] = validator.dice(model)
        assert abs(dice_cache[digest] - record["best_metric"]) < 1e-4, (dice_cache[digest], record)
        if self.best is not None and digest != self.best[1]:
            assert record["best_metric"] > self.best[0], ("model.pt replaced by a network that is not better", record)
        self.best = (record["best_metric"], digest)
        return state

    def check_finished(self, state: dict) -> None:
        assert state["newest"] == MAX_EPOCHS
        assert list(state["checkpoints"]) == [MAX_EPOCHS], sorted(state["checkpoints"])  # older ones removed
        trainer = state["checkpoints"][MAX_EPOCHS]["trainer"]
        assert trainer["iteration"] == MAX_EPOCHS * ITERATIONS_PER_EPOCH  # the same as an uninterrupted run
        assert state["temporary"] == [], state["temporary"]
        assert not self.repair_pending


def test_sigkill_at_random_moments_never_loses_work(tmp_path, tiny_cache, bundle_configs, tiny_overrides):
    rng = random.Random(int(os.environ.get("MONAI_SACB_FAULT_SEED", "20250")))  # another seed: other moments

    def new_round(index: int) -> Round:
        root = tmp_path / f"round_{index}"
        return Round(root, tiny_overrides(root, tiny_cache, max_epochs=MAX_EPOCHS))

    validator_overrides = tiny_overrides(tmp_path / "validator", tiny_cache, max_epochs=MAX_EPOCHS, resume=False)
    validator = Validator(bundle_configs.tiny_train, bundle_configs.meta, validator_overrides)
    dice_cache: dict = {}
    zygote = Zygote(bundle_configs.tiny_train, bundle_configs.meta, bundle_configs.logging)
    start = time.monotonic()
    kills, faults_hit, finished_rounds, trials = 0, set(), 0, 0
    summary = []
    try:
        current = new_round(0)
        while kills < KILLS and time.monotonic() - start < TIME_LIMIT:
            trials += 1
            current.trials += 1
            if rng.random() < 0.35:  # SIGKILL at an exact point of the next write (the delay only as a backstop)
                fault, kill_after = {"kind": rng.choice(FAULTS), "nth": 1}, 15.0
            else:  # SIGKILL after a random delay: start-up and resume, training, validation, a write
                fault, kill_after = None, rng.uniform(0.5, 6.5)
            log = current.root / f"run_{current.trials:02d}.log"
            answer = zygote.run(log, current.overrides, kill_after, fault, timeout=120)
            killed = answer["signal"] == signal.SIGKILL
            if not killed:
                assert answer["exit_code"] == 0, f"run failed (exit {answer}):\n{log.read_text()[-4000:]}"
            state = current.check(log, validator, dice_cache)
            if killed:
                kills += 1
                marker = re.search(r"FAULT-TEST: SIGKILL at (\w+)", log.read_text(errors="replace"))
                if marker:
                    faults_hit.add(marker.group(1))
                    if marker.group(1).endswith("_half"):  # the partial write is a temporary file, nothing else
                        assert state["temporary"], state
                moment = marker.group(1) if marker else f"{kill_after:.1f}s"
                summary.append((current.root.name, moment, state["newest"]))
            else:
                current.check_finished(state)
                finished_rounds += 1
                current = new_round(finished_rounds)
        # finish the round in progress without a kill: it must end like an uninterrupted run
        log = current.root / "run_final.log"
        answer = zygote.run(log, current.overrides, None, None, timeout=120)
        assert answer["exit_code"] == 0, f"final run failed ({answer}):\n{log.read_text()[-4000:]}"
        current.check_finished(current.check(log, validator, dice_cache))
        finished_rounds += 1
    finally:
        zygote.close()
    elapsed = time.monotonic() - start
    print(f"{kills} kills in {trials} runs, {finished_rounds} rounds finished, {elapsed:.0f} s: {summary}")
    assert kills >= KILLS, f"only {kills} kills landed in {elapsed:.0f} s ({trials} runs): the machine is too slow"
    # the random faults reached the inside of a write at least once (not only the moments between files)
    assert {"checkpoint_half", "model_half"} & faults_hit, (faults_hit, summary)
