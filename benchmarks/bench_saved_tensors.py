# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Memory that autograd keeps for the backward pass of one training step, SACBNet against MONAI's VoxelMorph, on the
CPU: the bytes of the distinct tensor storages saved for backward during ``net(moving, fixed)`` (random weights,
batch size 1, one-channel volumes), counted with ``torch.autograd.graph.saved_tensors_hooks``.

This is the part of training memory that depends on the formulation, and it can be measured without a GPU for
the formulation a GPU runs: SACBNet's blocks take their CPU kernels only on the CPU
(:py:func:`monai_sacb.networks.utils.use_cpu_kernels`), so the rows "plain formulation" switch those kernels off,
all of them (what tracing, export and ``torch.compile`` record, and what GPUs trained with before 0.9.6) or all
but the fused instance norm + LeakyReLU (what a CUDA GPU trains with since 0.9.6: the fused norm's autograd
function is the one CPU kernel that also runs there, for this memory).

    python benchmarks/bench_saved_tensors.py                  # 80x96x112
    python benchmarks/bench_saved_tensors.py --size 160,192,224
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch


@contextmanager
def _cpu_kernels(keep: Callable[[str], bool]):
    """Within the block, ``use_cpu_kernels`` answers False in every network module except those ``keep`` names."""
    import monai_sacb.networks  # noqa: F401  (imports every block module)

    patched = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("monai_sacb.networks") and hasattr(module, "use_cpu_kernels") and not keep(name):
            patched[name] = module.use_cpu_kernels
            module.use_cpu_kernels = lambda tensor: False
    try:
        yield
    finally:
        for name, original in patched.items():
            sys.modules[name].use_cpu_kernels = original


def saved_for_backward(net: torch.nn.Module, size: tuple[int, ...]) -> tuple[float, int]:
    """GiB and number of the distinct storages that autograd saves during one forward pass of ``net``."""
    torch.manual_seed(0)
    moving, fixed = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        warped, ddf = net(moving, fixed)
    (warped.mean() + ddf.mean()).backward()
    return sum(storages.values()) / 2**30, len(storages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="80,96,112")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    size = tuple(int(s) for s in args.size.split(","))

    from monai.networks.nets import VoxelMorph

    from monai_sacb.networks import SACBNet

    rows = [
        ("SACBNet, CPU kernels (as on a CPU)", SACBNet, lambda name: True),
        ("SACBNet, plain formulation (tracing, export, compile)", SACBNet, lambda name: False),
        (
            "SACBNet, plain formulation + fused norm (as on a CUDA GPU)",
            SACBNet,
            lambda name: name.endswith(".norm_act"),
        ),
        ("VoxelMorph (MONAI defaults)", VoxelMorph, lambda name: True),
    ]
    print(f"{'x'.join(map(str, size))} voxels, batch 1, torch {torch.__version__}, CPU\n")
    print("| network | saved for backward (GiB) | storages |")
    print("|---|---|---|")
    for title, build, keep in rows:
        with _cpu_kernels(keep):
            gib, count = saved_for_backward(build(), size)
        print(f"| {title} | {gib:.2f} | {count} |", flush=True)


if __name__ == "__main__":
    main()
