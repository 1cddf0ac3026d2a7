# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Registration accuracy on held-out pairs, every method side by side in one run: no registration (identity), ANTs SyN
with default settings (antspyx, ``pip install -e ".[bench]"``), MONAI VoxelMorph and SACBNet trained with the same
recipe (each plain and with the bundle's symmetric inference, ``PairInferer(symmetric=True)``), and SACBNet followed
by instance optimisation. SACBNet is the bundle's network (``SACBNetBackbone(subtract_self_estimate=True)``);
``--plain_matching_rows`` adds the paper's plain matching with the same weights.

Pairs: by default the held-out validation pairs of the label-synthesis dataset (FSL MNI152 T1 with the
Desikan-Killiany parcellation, a template and a parcellation that training never saw, both sides deformed
independently; 2 mm, 80x96x80); or any JSON list of ``{"moving_image", "fixed_image", "moving_label",
"fixed_label"}`` pairs on one grid (``--pairs``); or the two real pairs of an individual brain and a population
template, Colin27 <-> FSL MNI152, with atlas labels drawn on each (``--colin27 subcortical|lobes|tissue``,
:py:mod:`monai_sacb.apps.colin27`; ``apt install mricron-data``). Images are normalised like the bundle's inference
(percentiles to [0, 1]). ``--pad_to 96,112,96`` pads every pair with background to that size (the issue's reference
size for timings).

For each method and pair: mean Dice over the fixed image's labels (nearest-neighbour label warp), mean HD95 over
labels (mm), % of voxels with a non-positive Jacobian determinant, SD of the log Jacobian determinant, and wall
seconds per pair (the network, optimisation and the warp of the moving image; ANTs: the ``ants.registration``
call, which also warps the moving image; on a GPU with ``--device cuda``, also the copies of the pair to the GPU
and of the field back), averaged after one untimed warm-up call per method. A last column
registers each fixed image to itself and reports the largest displacement (voxels): an image registered to
itself should not move. Results are means (and standard deviations) over pairs.

    python benchmarks/bench_accuracy.py --model bundle/models/model.pt --voxelmorph runs/vm/model.pt --ants
    python benchmarks/bench_accuracy.py --model bundle/models/model.pt --io_steps 0 --threads 2 --num_pairs 4
    python benchmarks/bench_accuracy.py --cpu_bfloat16   # adds the network under CPU bfloat16 autocast
    python benchmarks/bench_accuracy.py --colin27 subcortical --ants --crop_foreground --cpu_bfloat16
    python benchmarks/bench_accuracy.py --device cuda --amp   # networks and optimisation on the GPU, + AMP rows

Timings are of this process on this machine; run it alone (``chrt -f 10`` on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _load_pairs(args) -> list[dict[str, torch.Tensor]]:
    from monai.transforms import SpatialPadd

    from monai_sacb.transforms import pair_preprocessing

    if args.pairs:
        items = json.loads(Path(args.pairs).read_text())
    elif args.colin27:
        from monai_sacb.apps.colin27 import prepare_colin27_pairs

        items = prepare_colin27_pairs()[args.colin27]
    else:
        from monai_sacb.apps import prepare_synth_dataset

        items = prepare_synth_dataset(num_validation_pairs=args.num_pairs)["validation"]
    transform = pair_preprocessing(intensity="percentile")
    keys = ["moving_image", "fixed_image", "moving_label", "fixed_label"]
    pad = SpatialPadd(keys, [int(s) for s in args.pad_to.split(",")]) if args.pad_to else None
    pairs = []
    for item in items[: args.num_pairs]:
        out = transform(dict(item))
        out = pad(out) if pad is not None else out
        pair = {k: out[k].as_tensor()[None] for k in ("moving_image", "fixed_image", "moving_label", "fixed_label")}
        pair["spacing"] = [float(s) for s in out["fixed_image"].pixdim[:3]]
        pair["name"] = f"{Path(str(item['moving_image'])).name} onto {Path(str(item['fixed_image'])).name}"
        pairs.append(pair)
    return pairs


def _network(kind: str, path: str, device: str, subtract_self_estimate: bool = True) -> torch.nn.Module:
    from monai.networks.nets import VoxelMorph

    from monai_sacb.handlers import check_checkpoint_compatible, network_state_dict
    from monai_sacb.networks import PairDDFWrapper, SACBNetBackbone

    if kind == "sacbnet":  # the bundle's network_def
        net = SACBNetBackbone(subtract_self_estimate=subtract_self_estimate)
    else:
        net = PairDDFWrapper(VoxelMorph())
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    check_checkpoint_compatible(checkpoint, net, path)
    net.load_state_dict(network_state_dict(checkpoint))
    return net.to(device).eval()


def _network_method(
    net: torch.nn.Module,
    symmetric: bool = False,
    refine: Callable | None = None,
    cpu_bfloat16: bool = False,
    crop_foreground: bool = False,
    amp: bool = False,
) -> Callable:
    """
    Registration by the bundle's inferer: the network, optionally both ways averaged, optionally refined; on the
    network's device, under ``torch.autocast`` there if ``amp`` (as the bundle's ``--amp True`` does).
    """
    from monai_sacb.inferers import PairInferer

    inferer = PairInferer(
        symmetric=symmetric, refine=refine, cpu_bfloat16=cpu_bfloat16, crop_foreground=crop_foreground
    )

    device = next(net.parameters()).device

    def register(moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            ddf = inferer(torch.cat([moving, fixed], dim=1).to(device), net)["ddf"]
        return {"ddf": ddf.float().cpu()}

    return register


def _identity(moving: torch.Tensor, fixed: torch.Tensor) -> dict:
    return {"ddf": torch.zeros(1, 3, *fixed.shape[2:])}


def _ants_method(moving_label_holder: dict) -> Callable:
    import ants

    def register(moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        fixed_img = ants.from_numpy(fixed[0, 0].numpy().astype(np.float32))
        moving_img = ants.from_numpy(moving[0, 0].numpy().astype(np.float32))
        start = time.perf_counter()
        result = ants.registration(fixed_img, moving_img, type_of_transform="SyN")
        seconds = time.perf_counter() - start  # the registration alone, not the metrics' Jacobian and label warp
        det = ants.create_jacobian_determinant_image(fixed_img, result["fwdtransforms"][0]).numpy()
        label = moving_label_holder.get("label")
        warped_label = None
        if label is not None:
            label_img = ants.from_numpy(label[0, 0].numpy().astype(np.float32))
            warped = ants.apply_transforms(fixed_img, label_img, result["fwdtransforms"], interpolator="nearestNeighbor")
            warped_label = torch.as_tensor(warped.numpy())[None, None]
        return {"det": torch.as_tensor(det)[None], "warped_label": warped_label, "seconds": seconds}

    return register


def _metrics(out: dict, pair: dict, hd95: bool) -> dict:
    from monai_sacb.metrics import (
        compute_label_dice,
        compute_label_hausdorff_distance,
        jacobian_determinant,
    )
    from monai_sacb.networks.blocks import ddf_sampling_grid

    fixed_label = pair["fixed_label"].round()
    if out.get("warped_label") is not None:
        warped_label = out["warped_label"].round()
    else:
        grid = ddf_sampling_grid(out["ddf"].float())
        warped_label = torch.nn.functional.grid_sample(
            pair["moving_label"], grid, mode="nearest", padding_mode="zeros", align_corners=True
        ).round()
    # ANTs reports its own Jacobian determinant (physical axes; the determinant does not depend on them)
    det = (out["det"] if "det" in out else jacobian_determinant(out["ddf"])).reshape(-1).double()
    log_det = torch.log(det.clamp_min(1e-9))
    row = {
        "dice": float(torch.nanmean(compute_label_dice(warped_label, fixed_label))),
        "folding": float(100.0 * (det <= 0).double().mean()),
        "sdlogj": float(log_det.std(unbiased=False)),
    }
    if hd95:
        distances = compute_label_hausdorff_distance(warped_label, fixed_label, spacing=pair["spacing"])
        row["hd95"] = float(torch.nanmean(distances))
    return row


def _save_panel(path: str, pair: dict, out: dict, method: str) -> None:
    from monai_sacb.metrics import compute_label_dice
    from monai_sacb.networks.blocks import warp_with_ddf
    from monai_sacb.visualize import registration_panel, save_figure

    if "ddf" not in out:
        raise SystemExit(f"--panel draws a network's field; the last method, {method}, gives none.")
    ddf = out["ddf"].float()
    warped = warp_with_ddf(pair["moving_image"], ddf)
    warped_label = warp_with_ddf(pair["moving_label"].round().to(torch.int32), ddf, mode="nearest")
    dice = [float(torch.nanmean(compute_label_dice(m.float(), pair["fixed_label"].round()))) for m in
            (pair["moving_label"].round(), warped_label)]
    figure = registration_panel(
        pair["fixed_image"], pair["moving_image"], warped, ddf,
        pair["fixed_label"].round().long(), pair["moving_label"].round().long(), warped_label.long(),
        spacing=pair["spacing"], title=f"{pair['name']}, {method}: Dice {dice[0]:.3f} -> {dice[1]:.3f}",
    )
    print(f"panel: {save_figure(figure, path)}")


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "bundle" / "models" / "model.pt"), help="SACBNet weights")
    parser.add_argument("--voxelmorph", default="", help="weights of MONAI VoxelMorph trained by the same recipe")
    parser.add_argument("--ants", action="store_true", help="add ANTs SyN (antspyx) with default settings")
    parser.add_argument(
        "--io_steps",
        default="[0, 50, 10]",
        help="instance optimisation steps per level at 1/4, 1/2 and full resolution (default: inference.json's "
        "'[0, 50, 10]'; 'default': InstanceOptimization's own (100, 50, 10); '0': none)",
    )
    parser.add_argument("--pairs", default="", help="JSON list of pairs (default: the held-out synth pairs)")
    parser.add_argument(
        "--colin27",
        default="",
        choices=["", "subcortical", "lobes", "tissue"],
        help="instead, the real pairs Colin27 <-> FSL MNI152 (apt install mricron-data) with this label set "
        "(monai_sacb.apps.colin27)",
    )
    parser.add_argument("--num_pairs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the networks and instance optimisation run: cpu, cuda")
    parser.add_argument(
        "--amp", action="store_true", help="add SACBNet rows under torch.autocast on --device (a GPU's float16)"
    )
    parser.add_argument("--pad_to", default="", help="pad every pair with background to this size, e.g. 96,112,96")
    parser.add_argument("--no_hd95", action="store_true", help="skip HD95 (the slowest metric)")
    parser.add_argument("--json", default="", help="also write per-pair results to this JSON file")
    parser.add_argument(
        "--panel",
        default="",
        help="also draw the first pair as registered by the table's last method into this PNG "
        "(monai_sacb.visualize.registration_panel; the default table's last row is the bundle's default)",
    )
    parser.add_argument(
        "--cpu_bfloat16",
        action="store_true",
        help="add SACBNet rows with the network under CPU bfloat16 autocast (PairInferer(cpu_bfloat16=True))",
    )
    parser.add_argument(
        "--crop_foreground",
        action="store_true",
        help="register inside the box of each pair's foreground (PairInferer(crop_foreground=True), the bundle's "
        "default) in every network row",
    )
    parser.add_argument(
        "--plain_matching_rows",
        action="store_true",
        help="add SACBNet rows with the paper's plain matching (SACBNetBackbone(subtract_self_estimate=False)) "
        "beside the bundle's network (subtract_self_estimate=True), with the same weights",
    )
    parser.add_argument(
        "--release_freed_memory",
        action="store_true",
        help="leave glibc's malloc as it is (default: keep freed CPU memory for reuse, as the bundle's configs do, "
        "monai_sacb.utils.keep_freed_cpu_memory; it applies to every method of the run)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    kept = False
    if not args.release_freed_memory:
        from monai_sacb.utils import keep_freed_cpu_memory

        kept = keep_freed_cpu_memory()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here.")
    pairs = _load_pairs(args)
    methods: dict[str, Callable] = {"identity": _identity}
    crop = args.crop_foreground
    holder: dict = {}
    if args.ants:
        methods["ANTs SyN (defaults)"] = _ants_method(holder)
    if args.voxelmorph:
        voxelmorph = _network("voxelmorph", args.voxelmorph, args.device)
        methods["VoxelMorph (same recipe)"] = _network_method(voxelmorph, crop_foreground=crop)
        methods["VoxelMorph, symmetric"] = _network_method(voxelmorph, symmetric=True, crop_foreground=crop)
    if args.model and Path(args.model).is_file():
        sacbnet = _network("sacbnet", args.model, args.device)

        def sacbnet_method(symmetric=False, refine=None, cpu_bfloat16=False, amp=False):
            return _network_method(sacbnet, symmetric, refine, cpu_bfloat16, crop_foreground=crop, amp=amp)

        methods["SACBNet"] = sacbnet_method()
        methods["SACBNet, symmetric (bundle default)"] = sacbnet_method(symmetric=True)
        if args.io_steps != "0":
            from monai_sacb.inferers import InstanceOptimization

            steps = json.loads(args.io_steps) if args.io_steps != "default" else None
            io = InstanceOptimization() if steps is None else InstanceOptimization(steps=steps)
            methods["SACBNet, symmetric + instance optimisation"] = sacbnet_method(True, io)
        if args.cpu_bfloat16:
            methods["SACBNet, bfloat16"] = sacbnet_method(cpu_bfloat16=True)
            methods["SACBNet, symmetric, bfloat16"] = sacbnet_method(True, cpu_bfloat16=True)
            if args.io_steps != "0":
                methods["SACBNet, symmetric, bfloat16 + instance optimisation"] = sacbnet_method(True, io, True)
        if args.amp:
            methods["SACBNet, AMP"] = sacbnet_method(amp=True)
            methods["SACBNet, symmetric, AMP"] = sacbnet_method(True, amp=True)
            if args.io_steps != "0":
                methods["SACBNet, symmetric, AMP + instance optimisation"] = sacbnet_method(True, io, amp=True)
        if args.plain_matching_rows:
            plain = _network("sacbnet", args.model, args.device, subtract_self_estimate=False)
            bf16 = args.cpu_bfloat16
            suffix = ", bfloat16" if bf16 else ""
            methods[f"SACBNet, plain matching{suffix}"] = _network_method(plain, False, None, bf16, crop)
            methods[f"SACBNet, plain matching, symmetric{suffix}"] = _network_method(plain, True, None, bf16, crop)

    # one untimed call per method first: the first call of a process pays one-time costs (oneDNN kernel creation,
    # memory mapped for the first time) that a run over many pairs does not pay again
    holder["label"] = pairs[0]["moving_label"]
    for register in methods.values():
        register(pairs[0]["moving_image"], pairs[0]["fixed_image"])
    results: dict[str, list[dict]] = {name: [] for name in methods}
    for index, pair in enumerate(pairs):
        holder["label"] = pair["moving_label"]
        for name, register in methods.items():
            start = time.perf_counter()
            out = register(pair["moving_image"], pair["fixed_image"])
            seconds = time.perf_counter() - start
            row = _metrics(out, pair, not args.no_hd95)
            row["seconds"] = out.get("seconds", seconds)
            if name != "identity" and not name.startswith("ANTs"):
                self_ddf = register(pair["fixed_image"], pair["fixed_image"])["ddf"]
                row["self_max"] = float(self_ddf.norm(dim=1).max())
            results[name].append(row)
            print(f"pair {index + 1}/{len(pairs)} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), file=sys.stderr)

    size = "x".join(str(s) for s in pairs[0]["fixed_image"].shape[2:])
    where = f", {torch.cuda.get_device_name(args.device)}" if args.device.startswith("cuda") else ""
    print(f"\n{len(pairs)} pairs of {size} voxels, {platform.processor() or platform.machine()}{where}, "
          f"torch {torch.__version__}, {args.threads} threads, freed CPU memory {'kept' if kept else 'released'}; "
          "seconds per pair after one untimed warm-up call per method\n")
    columns = [("dice", "Dice"), ("hd95", "HD95 (mm)"), ("folding", "% |J|<=0"), ("sdlogj", "SDlogJ"),
               ("seconds", "s / pair"), ("self_max", "self-registration max |u| (voxels)")]
    print("| method | " + " | ".join(title for _, title in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, rows in results.items():
        cells = [_summary([r[key] for r in rows if key in r]) for key, _ in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.panel:
        name = list(methods)[-1]
        _save_panel(args.panel, pairs[0], methods[name](pairs[0]["moving_image"], pairs[0]["fixed_image"]), name)


if __name__ == "__main__":
    main()
