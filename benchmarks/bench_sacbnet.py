# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Speed and memory of SACBNet against MONAI's VoxelMorph (default configuration), measured in one run.

Each (network, size, mode) is measured in a fresh subprocess, so peak memory is that measurement's own:
on CPU the process's peak resident set (imports included, the same for both networks), on CUDA
``torch.cuda.max_memory_allocated``. Times are the median of ``--repeats`` calls after one warm-up call.
Each row runs ``--rounds`` SACBNet/VoxelMorph process pairs, alternating, and reports the median time of each
network, the median of the per-round time ratios and their range (a shared machine's speed drifts by 10-20 %
over minutes, so only measurements taken side by side are compared), and the largest peak memory.
The k-means share is the time spent inside the SAC blocks' k-means during a forward call.

    python benchmarks/bench_sacbnet.py                         # CPU, 80x96x112 and 160x192x224
    python benchmarks/bench_sacbnet.py --device cuda --amp     # adds AMP rows on a GPU
    python benchmarks/bench_sacbnet.py --sizes 80,96,112 --threads 2

On a shared machine, run it with a real-time priority (``chrt -f 50 python ...``) so other processes do not
distort the timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings


def _build(name: str):
    import torch

    if name == "SACBNet":
        from monai_sacb.networks import SACBNet

        return SACBNet()
    from monai.networks.nets import VoxelMorph

    torch.manual_seed(0)
    return VoxelMorph()


def _measure(name: str, size: tuple[int, ...], mode: str, device: str, amp: bool, repeats: int, threads: int) -> dict:
    """Runs in the subprocess: one network, one size, one mode ("forward" or "train")."""
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _build(name).to(device)
    moving = torch.rand(1, 1, *size, device=device)
    fixed = torch.rand(1, 1, *size, device=device)
    kmeans_time = [0.0]
    if name == "SACBNet":
        for block in net.backbone.sac_blocks:
            forward = block.kmeans.forward

            def timed(points, _forward=forward):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = _forward(points)
                if device == "cuda":
                    torch.cuda.synchronize()
                kmeans_time[0] += time.perf_counter() - start
                return out

            block.kmeans.forward = timed

    def step():
        with torch.autocast(device_type=device, enabled=amp):
            if mode == "forward":
                with torch.no_grad():
                    net(moving, fixed)
            else:
                warped, ddf = net(moving, fixed)
                (warped.float().mean() + ddf.float().mean()).backward()
                net.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocator, kernels, reference grids
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, kmeans_shares = [], []
    for _ in range(repeats):
        kmeans_time[0] = 0.0
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        kmeans_shares.append(kmeans_time[0] / times[-1])
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {
        "time": statistics.median(times),
        "peak_gib": peak,
        "kmeans_share": statistics.median(kmeans_shares) if name == "SACBNet" else None,
    }


def _run_child(args: argparse.Namespace, name: str, size: tuple[int, ...], mode: str, amp: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        json.dumps({"name": name, "size": size, "mode": mode, "amp": amp}),
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ] + (["--keep_freed_memory"] if args.keep_freed_memory else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["80,96,112", "160,192,224"])
    parser.add_argument("--train_sizes", nargs="+", default=["80,96,112"], help="sizes that also get fwd+bwd rows")
    parser.add_argument(
        "--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"],
        help="what to measure: forward passes (every size) and forward+backward (the --train_sizes)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="also measure under torch.autocast (GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating SACBNet/VoxelMorph processes per row")
    parser.add_argument(
        "--keep_freed_memory",
        action="store_true",
        help="both networks' processes keep freed CPU memory for reuse (monai_sacb.utils.keep_freed_cpu_memory, "
        "as the bundle's configs do)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        job = json.loads(args.child)
        if args.keep_freed_memory:
            from monai_sacb.utils import keep_freed_cpu_memory

            keep_freed_cpu_memory()
        result = _measure(job["name"], tuple(job["size"]), job["mode"], args.device, job["amp"], args.repeats, args.threads)
        print(json.dumps(result))
        return

    import torch

    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    if args.device == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    print(f"machine: {machine}; torch {torch.__version__}; device {args.device}; CPU threads {args.threads}; "
          f"freed CPU memory {'kept' if args.keep_freed_memory else 'released'}")
    print(f"rounds {args.rounds} (alternating processes), each the median of {args.repeats} calls after a warm-up")
    print(f"{'size':>12} {'mode':>9} {'amp':>4} | {'SACBNet s':>9} {'VoxelMorph s':>12} {'ratio':>6} {'range':>9} | "
          f"{'SACB GiB':>8} {'VM GiB':>7} | {'k-means':>7}")
    amp_modes = [False, True] if args.amp else [False]
    for size_text in args.sizes:
        size = tuple(int(s) for s in size_text.split(","))
        modes = [m for m in args.modes if m == "forward" or size_text in args.train_sizes]
        for mode in modes:
            for amp in amp_modes:
                # alternate the two networks, one fresh process each per round, so that drifts in the
                # machine's speed (a shared VM) affect both alike; the ratio is the median of per-round ratios
                rounds = [
                    (_run_child(args, "SACBNet", size, mode, amp), _run_child(args, "VoxelMorph", size, mode, amp))
                    for _ in range(args.rounds)
                ]
                errors = [r.get("error") for pair in rounds for r in pair if "error" in r]
                if errors:
                    print(f"{size_text:>12} {mode:>9} {str(amp):>4} | error: {errors[0]}")
                    continue
                ratios = sorted(sacb["time"] / vm["time"] for sacb, vm in rounds)
                sacb_time = statistics.median(sacb["time"] for sacb, _ in rounds)
                vm_time = statistics.median(vm["time"] for _, vm in rounds)
                sacb_peak = max(sacb["peak_gib"] for sacb, _ in rounds)
                vm_peak = max(vm["peak_gib"] for _, vm in rounds)
                share = f"{100 * statistics.median(sacb['kmeans_share'] for sacb, _ in rounds):.0f}%"
                spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
                print(
                    f"{size_text:>12} {mode:>9} {'yes' if amp else 'no':>4} | {sacb_time:9.2f} {vm_time:12.2f} "
                    f"{statistics.median(ratios):6.2f} {spread:>9} | {sacb_peak:8.2f} {vm_peak:7.2f} | {share:>7}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
