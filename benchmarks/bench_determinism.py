# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Whether short training runs repeat bit for bit, and what repeatability costs, with PyTorch's default algorithms
and under ``torch.use_deterministic_algorithms(True)`` (the bundle's ``--deterministic True``), measured in one run.

Each configuration trains the shipped weights (``bundle/models/model.pt``) for ``--steps`` Adam steps (fast LNCC +
diffusion, the bundle's loss) on one smooth synthetic pair, twice, each time after
``monai.utils.set_determinism(seed=0, use_deterministic_algorithms=...)``, and the table shows the largest
difference between the two runs' weights, the median step time of each run and the peak GPU memory.

    python benchmarks/bench_determinism.py                        # CUDA, 80x96x80
    python benchmarks/bench_determinism.py --device cpu --size 32,48,32 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

# cuBLAS needs this before CUDA starts for deterministic matrix products
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
from monai.utils import set_determinism  # noqa: E402

from monai_sacb.losses import FastLocalNormalizedCrossCorrelationLoss, ForwardDiffusionLoss  # noqa: E402
from monai_sacb.networks import SACBNet  # noqa: E402
from monai_sacb.networks.blocks import warp_with_ddf  # noqa: E402
from monai_sacb.transforms.deformation import random_smooth_ddf  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "bundle" / "models" / "model.pt"


def smooth_pair(size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(moving, fixed), (1, 1, *size): a blob with edges and ripples, and a smooth random warp of it."""
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in size], indexing="ij")
    fixed = (1 - sum(a**2 for a in axes) / 2).clamp_min(0)[None, None]
    fixed = fixed + 0.3 * torch.sin(4 * axes[0])[None, None] * (fixed > 0)
    return warp_with_ddf(fixed, random_smooth_ddf(size, 3.0, 16, rng=0)[None]), fixed


def train(moving, fixed, device: str, steps: int, amp: bool, deterministic: bool) -> tuple[torch.Tensor, float, float]:
    """Weights after ``steps`` steps (flattened), median step seconds, peak GiB (GPU; 0 on the CPU)."""
    set_determinism(seed=0, use_deterministic_algorithms=deterministic)
    net = SACBNet(subtract_self_estimate=True).to(device).train()
    net.backbone.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    similarity, regularisation = FastLocalNormalizedCrossCorrelationLoss(spatial_dims=3), ForwardDiffusionLoss()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast(device, enabled=amp):
            warped, ddf = net(moving, fixed)
        loss = similarity(warped.float(), fixed) + regularisation(ddf.float())
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return torch.cat([p.detach().flatten() for p in net.parameters()]), statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="80,96,80")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    size = tuple(int(s) for s in args.size.split(","))
    moving, fixed = (t.to(args.device) for t in smooth_pair(size))
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {'x'.join(map(str, size))}, {args.steps} steps per run\n")
    print("| settings | largest weight difference between two runs | median step s (run 1 / run 2) | peak GiB |")
    print("|---|---|---|---|")
    for amp, deterministic in ((False, False), (False, True), (True, True)):
        first, time_1, peak = train(moving, fixed, args.device, args.steps, amp, deterministic)
        second, time_2, _ = train(moving, fixed, args.device, args.steps, amp, deterministic)
        title = ("use_deterministic_algorithms(True)" if deterministic else "default") + (", AMP" if amp else "")
        difference = "0 (bitwise equal)" if torch.equal(first, second) else f"{float((first - second).abs().max()):.1e}"
        print(f"| {title} | {difference} | {time_1:.3f} / {time_2:.3f} | {peak:.2f} |", flush=True)
    set_determinism(seed=None, use_deterministic_algorithms=False)


if __name__ == "__main__":
    main()
