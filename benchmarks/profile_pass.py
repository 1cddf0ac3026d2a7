# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Where the time of one registration pass goes on the CPU: the bundle's network (``SACBNetBackbone(
subtract_self_estimate=True)``, shipped weights) called through ``PairInferer`` like the bundle's inference, on the
held-out pairs of the accuracy benchmark, each part of the pass timed by wrapping the function or module that
computes it. Nested parts are counted in their parents too (``network`` holds almost everything; ``sac2`` holds
``kmeans2``; ``flow warps`` and ``feature warp`` are disjoint). ms per pass, after one untimed pass per pair.

    python benchmarks/profile_pass.py                                  # bfloat16 autocast, 96x112x96, cropped
    MONAI_SACB_NUMBA=0 python benchmarks/profile_pass.py               # the same without the compiled kernels
    python benchmarks/profile_pass.py --float32 --pad_to none --rounds 5

The wrappers add a few microseconds per call (a few hundred calls per pass); compare runs of this script with each
other, and take the pass time from ``bench_accuracy.py``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _timed(totals: dict, name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundle/models/model.pt")
    parser.add_argument("--pad_to", default="96,112,96", help='pad every pair to this size ("none": 80x96x80)')
    parser.add_argument("--num_pairs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="passes over all pairs after the warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--float32", action="store_true", help="no bfloat16 autocast")
    parser.add_argument("--whole_grid", action="store_true", help="no foreground crop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import bench_accuracy

    import monai_sacb.inferers.pair as pair_module
    import monai_sacb.networks.nets.sacbnet as sacbnet_module
    from monai_sacb.inferers import PairInferer
    from monai_sacb.networks.blocks.pair_stacking import use_stacked_pair
    from monai_sacb.utils import keep_freed_cpu_memory

    keep_freed_cpu_memory()
    args.pairs, args.colin27 = "", None
    args.pad_to = "" if args.pad_to == "none" else args.pad_to
    pairs = bench_accuracy._load_pairs(args)
    net = bench_accuracy._network("sacbnet", args.model, "cpu")

    totals: dict[str, float] = collections.defaultdict(float)
    # functions the network calls through its module's namespace, and the network's own steps
    sacbnet_module.similarity_matching_flow = _timed(totals, "matching", sacbnet_module.similarity_matching_flow)
    flow_warp = _timed(totals, "flow warps", sacbnet_module.warp_with_ddf)
    sacbnet_module.warp_with_ddf = flow_warp
    net._with_warped_moving = _timed(totals, "feature warp", net._with_warped_moving)
    net._stacked_with_warped_moving = _timed(totals, "feature warp", net._stacked_with_warped_moving)
    net._upsample = _timed(totals, "upsample", net._upsample)
    net.forward = _timed(totals, "network", net.forward)
    net.encoder.forward = _timed(totals, "encoder", net.encoder.forward)
    net.refine.forward = _timed(totals, "refine", net.refine.forward)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.float32):
        stacked = use_stacked_pair(torch.empty(1, 1, 1, 1, 1))
    if stacked:  # bfloat16 inference with AMX: the full-resolution layers on the stacked pair (pair_stacking.py)
        net.encoder.forward_stacked_pair = _timed(totals, "encoder", net.encoder.forward_stacked_pair)
        layer_of_pair = sacbnet_module.stacked_conv_norm_act  # the refinement's layers, and the head's second one
        timed_layer = _timed(totals, "refine", layer_of_pair)
        sacbnet_module.stacked_conv_norm_act = lambda layer, x: (
            timed_layer(layer, x) if any(layer is refining for refining in net.refine) else layer_of_pair(layer, x)
        )
        net._stacked_head = _timed(totals, "head", net._stacked_head)
    else:  # the head runs layer by layer when the self-estimate is subtracted (one folded convolution besides)
        for module in (net.head[0].conv, net.head[0].adn, *net.head[1:]):
            module.forward = _timed(totals, "head", module.forward)
        sacbnet_module.same_conv = _timed(totals, "head", sacbnet_module.same_conv)
    for level, block in enumerate(net.sac_blocks, start=2):
        block.forward = _timed(totals, f"sac{level}", block.forward)
        block.kmeans.forward = _timed(totals, f"kmeans{level}", block.kmeans.forward)
    pair_module.warp_with_ddf = _timed(totals, "moving image warp", pair_module.warp_with_ddf)
    pair_module.foreground_box = _timed(totals, "foreground box", pair_module.foreground_box)

    inferer = PairInferer(cpu_bfloat16=not args.float32, crop_foreground=not args.whole_grid)
    inputs = [torch.cat([pair["moving_image"], pair["fixed_image"]], dim=1) for pair in pairs]
    with torch.no_grad():
        for x in inputs:
            inferer(x, net)
        totals.clear()
        start = time.perf_counter()
        for _ in range(args.rounds):
            for x in inputs:
                inferer(x, net)
        elapsed = time.perf_counter() - start
    # the feature warps run inside warp_with_ddf's wrapper too: report the flow warps without them
    totals["flow warps"] -= totals["feature warp"]
    passes = args.rounds * len(inputs)
    size = "x".join(str(s) for s in inputs[0].shape[2:])
    mode = "float32" if args.float32 else "bfloat16 autocast"
    print(f"{passes} passes at {size}, {mode}, {'whole grid' if args.whole_grid else 'cropped'}, {args.threads} threads")
    print(f"| part | ms per pass |\n|---|---|\n| whole pass | {1000 * elapsed / passes:.1f} |")
    for name, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"| {name} | {1000 * seconds / passes:.1f} |")


if __name__ == "__main__":
    main()
