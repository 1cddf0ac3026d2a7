# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Where the optional compiled kernels run: only in the main thread of the main process, unless switched off."""

from __future__ import annotations

import threading

import pytest
import torch

from monai_sacb.networks.blocks.numba_kernels import numba_kernels
from monai_sacb.networks.blocks.warp import warp_with_ddf

pytest.importorskip("numba")


@pytest.mark.parametrize("switch", ["0", "off", "False"])
def test_switched_off_by_the_environment(switch, monkeypatch):
    monkeypatch.setenv("MONAI_SACB_NUMBA", switch)
    assert numba_kernels() is None


def test_on_in_the_main_thread_only(monkeypatch):
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    assert numba_kernels() is not None
    seen = []
    thread = threading.Thread(target=lambda: seen.append(numba_kernels()))
    thread.start()
    thread.join()
    assert seen == [None]


class _Warps(torch.utils.data.Dataset):
    """Each item: whether the kernels are on in this (worker) process, and a warp computed there."""

    def __init__(self, image, ddf):
        self.image, self.ddf = image, ddf

    def __len__(self):
        return 2

    def __getitem__(self, index):
        with torch.no_grad():
            return numba_kernels() is not None, warp_with_ddf(self.image, self.ddf)[0]


def test_dataloader_workers_forked_after_the_kernels_ran_use_eager_code(monkeypatch):
    """GNU OpenMP, one of Numba's threading layers, may hang in a child forked after the parent used it: workers
    must not call the kernels. The parent runs the compiled warp first; the workers' warps equal it."""
    monkeypatch.setenv("MONAI_SACB_NUMBA", "1")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 4, 8, 6, 10, generator=generator).contiguous(memory_format=torch.channels_last_3d)
    ddf = torch.randn(1, 3, 8, 6, 10, generator=generator) * 2
    with torch.no_grad():
        expected = warp_with_ddf(image, ddf)[0]
    context = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None
    loader = torch.utils.data.DataLoader(
        _Warps(image, ddf), batch_size=None, num_workers=1, multiprocessing_context=context, timeout=120
    )
    for compiled_in_worker, warped in loader:
        assert not compiled_in_worker
        assert torch.equal(warped, expected)
