# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Fork server of the fault-injection test (``test_fault_injection.py``): it imports torch, MONAI and the package
once (about 10 s on a loaded 2-core machine), then forks one training process per request, so that each of the
many killed-and-restarted runs starts in well under a second.

Protocol, one JSON object per line on stdin:

    {"log": "/path/run.log", "config_file": [...config files...], "meta_file": ..., "logging_file": ...,
     "overrides": {...config overrides...}, "kill_after": seconds or null, "fault": null or {"kind": ..., "nth": n}}

For each request the server forks a child that runs the training workflow of ``config_file`` in-process
(``ConfigWorkflow``) with its stdout and stderr in ``log``; if ``kill_after`` is given and the child still runs after that many
seconds, the server sends it ``SIGKILL``. The server is the child's parent, so the pid it kills cannot have been
reused. It answers one line, ``{"pid", "exit_code", "signal", "seconds"}``. An empty line or EOF stops it.

Faults the child injects into itself (``SIGKILL`` at an exact point that a random delay rarely hits):

- ``"checkpoint_half"``: in the ``nth`` write of a ``checkpoint_epoch=*.pt``, after half of its bytes;
- ``"model_half"``: the same in the ``nth`` write of ``model.pt``;
- ``"after_checkpoint"``: right after the ``nth`` checkpoint is complete (before ``model.pt`` and the removal of
  the older checkpoint);
- ``"after_model"``: right after the ``nth`` ``model.pt`` is complete (before the older checkpoint is removed).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # the package of this checkout, also when it is not installed

import torch  # noqa: E402

torch.set_num_threads(1)

import monai_sacb.handlers.checkpoint as checkpoint_module  # noqa: E402
from monai.bundle import ConfigWorkflow  # noqa: E402  (imported once, before forking)


def _kill_self(kind: str, path: str) -> None:
    print(f"FAULT-TEST: SIGKILL at {kind} ({os.path.basename(path)})", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_fault(fault: dict | None) -> None:
    """Patch the checkpoint module of this (child) process so that it kills itself at the requested point."""
    if not fault:
        return
    kind, nth = fault["kind"], int(fault.get("nth", 1))
    target = "model.pt" if kind.startswith(("model", "after_model")) else "checkpoint_epoch="
    counter = {"n": 0, "path": ""}
    original_save = checkpoint_module.atomic_save
    real_torch_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_torch_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        _kill_self(kind, counter["path"])

    def atomic_save(obj, path, *args, **kwargs):
        if target not in os.path.basename(os.fspath(path)):
            return original_save(obj, path, *args, **kwargs)
        counter["n"] += 1
        counter["path"] = os.fspath(path)
        if counter["n"] != nth:
            return original_save(obj, path, *args, **kwargs)
        if kind.endswith("_half"):
            torch.save = half_save
            try:
                return original_save(obj, path, *args, **kwargs)
            finally:
                torch.save = real_torch_save
        original_save(obj, path, *args, **kwargs)
        _kill_self(kind, os.fspath(path))

    checkpoint_module.atomic_save = atomic_save


def _child(request: dict) -> int:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        _install_fault(request.get("fault"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            workflow = ConfigWorkflow(
                config_file=request["config_file"],
                meta_file=request["meta_file"],
                logging_file=request["logging_file"],
                workflow_type="train",
                **request["overrides"],
            )
            workflow.initialize()
            workflow.run()
            workflow.finalize()
        print("FAULT-TEST: run finished", flush=True)
        return 0
    except BaseException:
        traceback.print_exc()
        return 1


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            break
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        kill_after = request.get("kill_after")
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
                break
            if kill_after is not None and time.monotonic() - start >= kill_after:
                os.kill(pid, signal.SIGKILL)
                status = os.waitpid(pid, 0)[1]
                break
            time.sleep(0.01)
        answer = {
            "pid": pid,
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "seconds": round(time.monotonic() - start, 3),
        }
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
