# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""keep_freed_cpu_memory, checked in fresh processes (it changes the allocator of the process that calls it)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# a few rounds of what a network does on CPU: tensors of 32-64 MiB allocated, written and freed; minor page
# faults per round (a fault is the first touch of a freshly mapped 4 KiB page)
_PROBE = """
import resource, sys, torch
from monai_sacb.utils import keep_freed_cpu_memory
applied = keep_freed_cpu_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
x = torch.rand(1, 4, 128, 128, 128)
w = torch.rand(4, 4, 3, 3, 3)
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.nn.functional.conv3d(x, w, padding=1)
    z = torch.cat([x, y], 1)
    float(z.relu().sum())
    del y, z
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, keep_freed_cpu_memory() if applied else None, *faults)
"""


def _probe(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_memory_is_reused_without_page_faults():
    released = _probe("release")
    kept = _probe("keep")
    assert released[:2] == ["None", "None"] and kept[:2] == ["True", "True"]  # a second call: still in effect
    # after the first round (which maps the memory either way)
    released_faults, kept_faults = sum(map(int, released[3:])), sum(map(int, kept[3:]))
    pages_per_round = (3 * 32 * 2**20) // 4096  # y (32 MiB) and z (64 MiB) are fresh mappings by default
    assert released_faults > 5 * pages_per_round * 0.9
    assert kept_faults < released_faults / 4
