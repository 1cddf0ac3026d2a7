# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Speed of :py:class:`monai_sacb.losses.FastLocalNormalizedCrossCorrelationLoss` against MONAI's
``LocalNormalizedCrossCorrelationLoss`` (rectangular window), measured side by side in one run.

For each shape and mode (``forward``: the loss value without autograd; ``forward+backward``: the loss and the
gradient with respect to pred) the two implementations are timed alternately, ``--repeats`` times each after
one warm-up call, and the table shows the median times, their ratio (fast / MONAI) and the largest absolute
difference of the loss values (forward) or of the gradients (forward+backward).

    python benchmarks/bench_lncc.py                                  # 96x112x96, 2 threads, kernel 9
    python benchmarks/bench_lncc.py --shapes 96,112,96 160,192,224 --threads 1 --repeats 3
    python benchmarks/bench_lncc.py --device cuda --dtype float32
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss

from monai_sacb.losses import FastLocalNormalizedCrossCorrelationLoss


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _run(loss_fn, pred, target, mode: str, device: str) -> tuple[float, torch.Tensor]:
    _sync(device)
    start = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            out = loss_fn(pred, target)
    else:
        pred = pred.detach().requires_grad_(True)
        loss_fn(pred, target).backward()
        out = pred.grad
    _sync(device)
    return time.perf_counter() - start, out.detach()


def bench(shape, mode, kernel_size, repeats, device, dtype) -> dict:
    torch.manual_seed(0)
    spatial_dims = len(shape)
    pred = torch.rand(1, 1, *shape, device=device, dtype=dtype)
    target = (0.7 * pred + 0.3 * torch.rand_like(pred)).contiguous()
    losses = {
        "monai": LocalNormalizedCrossCorrelationLoss(spatial_dims, kernel_size, "rectangular").to(device),
        "fast": FastLocalNormalizedCrossCorrelationLoss(spatial_dims, kernel_size).to(device),
    }
    times: dict[str, list[float]] = {name: [] for name in losses}
    outputs = {}
    for name, fn in losses.items():  # warm-up
        outputs[name] = _run(fn, pred, target, mode, device)[1]
    for _ in range(repeats):  # alternate, so that a drifting machine speed affects both alike
        for name, fn in losses.items():
            times[name].append(_run(fn, pred, target, mode, device)[0])
    monai_s, fast_s = statistics.median(times["monai"]), statistics.median(times["fast"])
    return {
        "shape": "x".join(map(str, shape)),
        "mode": mode,
        "monai_s": monai_s,
        "fast_s": fast_s,
        "ratio": fast_s / monai_s,
        "max_abs_diff": (outputs["fast"] - outputs["monai"]).abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["96,112,96"], help="spatial shapes, e.g. 96,112,96 64,64")
    parser.add_argument("--kernel-size", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {args.device}, "
        f"{args.threads} threads, {args.dtype}, kernel {args.kernel_size}, median of {args.repeats}"
    )
    header = f"{'shape':>14} {'mode':>17} {'MONAI s':>9} {'fast s':>9} {'ratio':>7} {'max abs diff':>13}"
    print(header)
    print("-" * len(header))
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split(","))
        for mode in ("forward", "forward+backward"):
            row = bench(shape, mode, args.kernel_size, args.repeats, args.device, dtype)
            print(
                f"{row['shape']:>14} {row['mode']:>17} {row['monai_s']:9.4f} {row['fast_s']:9.4f} "
                f"{row['ratio']:7.3f} {row['max_abs_diff']:13.3e}"
            )


if __name__ == "__main__":
    main()
