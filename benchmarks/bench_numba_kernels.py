# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
The optional compiled CPU kernels (``monai_sacb.networks.blocks.numba_kernels``, ``pip install -e ".[fast]"``) against
the eager PyTorch code they replace, in one run, on the tensors of a bfloat16 inference pass at ``--size``: the
bfloat16 instance norm + LeakyReLU of SACBNet's levels (two images per batch, channels-last), the float32
trilinear warp without gradient of 8-channel features, a 3-channel flow and a 1-channel image along a smooth field,
the in-place warp of bfloat16 features (the moving half of a batch), the 2x average pooling of bfloat16 features,
the x2 upsampling of a float32 flow under bfloat16 autocast, and the similarity matching of bfloat16 features at
levels 2 and 3 (the fixed features against the warped moving ones, alone and less the fixed features matched with
themselves, ``subtract_self_match=True``, as ``subtract_self_estimate`` does).
The table gives the median and the fastest of ``--repeats`` calls of each (ms), their ratio, and the largest
difference between the two outputs (the warps and the upsampling: 0, the same bits; the norm: at most a rare step
of bfloat16, since its statistics are summed in another order; the pooling: a bfloat16 step where the eager code's
three roundings differ from the one of the exact mean; the matching: float32 rounding of the flow, its channel sums
being summed in another order). The network uses the compiled norm at every size (0.9.10; from 2^20 values up
before, when its per-call costs were higher).

    python benchmarks/bench_numba_kernels.py --threads 2
    python benchmarks/bench_numba_kernels.py --size 96,112,96 --repeats 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.nn import functional as F

from monai_sacb.networks import SACBNetBackbone
from monai_sacb.networks.blocks import (
    AvgPool2x,
    instance_norm_leaky_relu,
    similarity_matching_flow,
    warp_with_ddf,
)
from monai_sacb.networks.blocks.numba_kernels import numba_kernels


def _both(function, make_input, repeats: int):
    """Eager and compiled, alternating per call so that both see the same state of the machine; the first round
    compiles and warms up, untimed."""
    runs, results = {"0": [], "1": []}, {}
    for round_ in range(repeats + 1):
        for switch in ("0", "1"):
            os.environ["MONAI_SACB_NUMBA"] = switch
            argument = make_input()
            start = time.perf_counter()
            results[switch] = function(argument)
            if round_:
                runs[switch].append(time.perf_counter() - start)
    os.environ.pop("MONAI_SACB_NUMBA")
    return runs["0"], runs["1"], (results["0"].float() - results["1"].float()).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="80,96,80", help="full-resolution size of the pass")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if numba_kernels() is None:
        raise SystemExit("numba is not installed (pip install numba) or MONAI_SACB_NUMBA=0: nothing to compare.")
    size = tuple(int(s) for s in args.size.split(","))
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for level, channels in enumerate((8, 16, 32)):
            shape = (2, channels, *[s >> level for s in size])
            x = (torch.randn(shape, generator=generator) * 3 + 1).bfloat16()
            x = x.contiguous(memory_format=torch.channels_last_3d)
            eager, compiled, diff = _both(lambda t: instance_norm_leaky_relu(t, inplace=True), x.clone, args.repeats)
            rows.append((f"bfloat16 norm + LeakyReLU, {tuple(shape)}", eager, compiled, diff))
        coarse = torch.randn(1, 3, *[max(2, s // 8) for s in size], generator=generator) * 3
        ddf = F.interpolate(coarse, size=size, mode="trilinear", align_corners=True)
        for channels in (8, 3, 1):
            image = torch.randn(1, channels, *size, generator=generator)
            if channels > 1:
                image = image.contiguous(memory_format=torch.channels_last_3d)
            eager, compiled, diff = _both(lambda t: warp_with_ddf(t, ddf), lambda: image, args.repeats)
            rows.append((f"float32 trilinear warp, {channels} channel(s) at {size}", eager, compiled, diff))
        # the feature warp of a bfloat16 pass: the moving half of the features, overwritten in place
        features = torch.randn(2, 8, *size, generator=generator).bfloat16()
        features = features.contiguous(memory_format=torch.channels_last_3d)
        eager, compiled, diff = _both(
            lambda t: warp_with_ddf(t[1:], ddf, out=t[1:]), features.clone, args.repeats
        )
        rows.append((f"bfloat16 feature warp in place, 8 channels at {size}", eager, compiled, diff))
        pooled = torch.randn(1, 16, *size, generator=generator).bfloat16()
        pooled = pooled.contiguous(memory_format=torch.channels_last_3d)
        eager, compiled, diff = _both(AvgPool2x(), lambda: pooled, args.repeats)
        rows.append((f"bfloat16 2x average pooling, {tuple(pooled.shape)}", eager, compiled, diff))
        flow = torch.randn(1, 3, *[s // 2 for s in size], generator=generator) * 3
        network = SACBNetBackbone()

        def upsample(t):
            with torch.autocast("cpu", dtype=torch.bfloat16):  # where the network uses the compiled kernel
                return network._upsample(t)

        eager, compiled, diff = _both(upsample, lambda: flow, args.repeats)
        rows.append((f"float32 flow x2 upsampling, {tuple(flow.shape)} -> {size}", eager, compiled, diff))
        for level, channels in ((1, 16), (2, 32)):
            shape = (1, channels, *[s >> level for s in size])
            layout = torch.channels_last_3d
            fixed = torch.randn(shape, generator=generator).bfloat16().contiguous(memory_format=layout)
            moving = torch.randn(shape, generator=generator).bfloat16().contiguous(memory_format=layout)
            cases = (("against moving", (moving, fixed, False)), ("less the self-match", (moving, fixed, True)))
            for name, arguments in cases:
                eager, compiled, diff = _both(lambda p: similarity_matching_flow(*p), lambda: arguments, args.repeats)
                rows.append((f"bfloat16 matching {name}, {tuple(shape)}", eager, compiled, diff))
    print(f"torch {torch.__version__}, {args.threads} threads; ms per call, median (fastest) of {args.repeats}")
    print("| kernel | eager PyTorch | numba | numba / eager | max difference |")
    print("|---|---|---|---|---|")
    for name, eager, compiled, diff in rows:
        e, c = statistics.median(eager) * 1e3, statistics.median(compiled) * 1e3
        print(
            f"| {name} | {e:.2f} ({min(eager) * 1e3:.2f}) | {c:.2f} ({min(compiled) * 1e3:.2f}) | {c / e:.2f} | {diff:.3g} |"
        )


if __name__ == "__main__":
    main()
