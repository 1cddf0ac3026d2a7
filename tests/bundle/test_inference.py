# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_sacb.apps import bundle_datalist


def _outputs(folder):
    return sorted(p.name for p in folder.glob("*.nii.gz"))


def test_inference_defaults_write_pairs_in_fixed_geometry(
    trained_root, tiny_cache, tmp_path, bundle_configs, run_bundle
):
    out = tmp_path / "out"
    spacing = bundle_configs.tiny_spacing
    run_bundle(
        bundle_configs.inference,
        "infer",
        bundle_root=str(trained_root),
        data_format="default",
        dataset_dir=str(tiny_cache),
        spacing=spacing,
        num_pairs=2,
        output_dir=str(out),
        **{"network_def#kmeans_iters": 3},
    )
    pairs = bundle_datalist("default", tiny_cache, "validation", num_pairs=2, spacing=spacing)
    assert len(_outputs(out)) == 4 * len(pairs)  # warped image and label, MONAI ddf, ITK displacement field
    for pair in pairs:
        fixed = nib.load(pair["fixed_image"])
        stem = f"{_stem(pair['moving_image'])}_to_{_stem(pair['fixed_image'])}"
        warped = nib.load(out / f"{stem}_warped.nii.gz")
        label = nib.load(out / f"{stem}_warped_label.nii.gz")
        ddf = nib.load(out / f"{stem}_ddf.nii.gz")
        for image in (warped, label, ddf):
            np.testing.assert_allclose(image.affine, fixed.affine, atol=1e-4)
            assert image.shape[:3] == fixed.shape
        assert ddf.shape[3:] in ((3,), (1, 3))
        moving_labels = set(np.unique(np.asarray(nib.load(pair["moving_label"]).dataobj)).tolist())
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= moving_labels  # nearest: no new values


def _stem(path):
    return str(path).split("/")[-1].replace(".nii.gz", "")


def test_inference_one_pair_from_command_line(trained_root, tmp_path, bundle_configs, run_bundle):
    """A pair of an odd size (padded to /16 for the network, cropped back) with a non-trivial affine."""
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-20.0, 10.0, 5.0]
    shape = (30, 28, 34)
    paths = {}
    for name in ("mov", "fix"):
        image = np.zeros(shape, np.float32)
        image[5:25, 6:22, 8:28] = rng.uniform(0.5, 1.0, size=(20, 16, 20))
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(image, affine), paths[name])
    label = np.zeros(shape, np.int16)
    label[5:15, 6:22, 8:28], label[15:25, 6:22, 8:28] = 1, 2
    paths["label"] = str(tmp_path / "mov_seg.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), paths["label"])
    out = tmp_path / "out"
    run_bundle(
        bundle_configs.inference,
        "infer",
        bundle_root=str(trained_root),
        moving_image=paths["mov"],
        fixed_image=paths["fix"],
        moving_label=paths["label"],
        output_dir=str(out),
        **{"network_def#kmeans_iters": 3},
    )
    assert _outputs(out) == [
        "mov_to_fix_ddf.nii.gz",
        "mov_to_fix_itk_displacement.nii.gz",
        "mov_to_fix_warped.nii.gz",
        "mov_to_fix_warped_label.nii.gz",
    ]
    for name in _outputs(out):
        image = nib.load(out / name)
        np.testing.assert_allclose(image.affine, affine, atol=1e-4)
        assert image.shape[:3] == shape
    assert set(np.unique(np.asarray(nib.load(out / "mov_to_fix_warped_label.nii.gz").dataobj))) <= {0, 1, 2}


def _mean_dice(pred, truth):
    values = [v for v in np.unique(truth) if v > 0]
    dice = [2 * np.sum((pred == v) & (truth == v)) / (np.sum(pred == v) + np.sum(truth == v)) for v in values]
    return float(np.mean(dice))


def test_instance_optimisation_refines_the_field_and_the_label_follows(
    trained_root, tiny_cache, tmp_path, bundle_configs, run_bundle
):
    spacing = bundle_configs.tiny_spacing
    pairs = bundle_datalist("default", tiny_cache, "validation", num_pairs=2, spacing=spacing)
    dice = {}
    for name, steps in (("plain", [0, 0, 0]), ("io", [0, 60, 20])):
        out = tmp_path / name
        run_bundle(
            bundle_configs.inference,
            "infer",
            bundle_root=str(trained_root),
            data_format="default",
            dataset_dir=str(tiny_cache),
            spacing=spacing,
            num_pairs=2,
            output_dir=str(out),
            io_steps=steps,
            **{"network_def#kmeans_iters": 3},
        )
        dice[name] = []
        for pair in pairs:
            stem = f"{_stem(pair['moving_image'])}_to_{_stem(pair['fixed_image'])}"
            label = np.asarray(nib.load(out / f"{stem}_warped_label.nii.gz").dataobj)
            fixed_label = np.asarray(nib.load(pair["fixed_label"]).dataobj)
            dice[name].append(_mean_dice(label, fixed_label))
        dice[name + "_ddf"] = np.asarray(nib.load(out / f"{stem}_ddf.nii.gz").dataobj)
    assert not np.allclose(dice["plain_ddf"], dice["io_ddf"])  # the field was refined
    assert np.mean(dice["io"]) > np.mean(dice["plain"])  # and the labels warped with it overlap better


class _ConstantShift(torch.nn.Module):
    """
    A network_def that maps every pair to the same ddf, one voxel along the first spatial axis (an exact voxel:
    nearest and linear sampling agree, so the expected label is a shift of the array). It warps nothing itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor([1.0, 0.0, 0.0]))

    def forward(self, pair):
        return self.shift.view(1, 3, 1, 1, 1).expand(pair.shape[0], 3, *pair.shape[2:]).clone()


# where inference.json's components could look up the warp (the inferer warps the image; Warpd, which no longer
# touches the label, must not warp anything) and where ApplyDisplacementd looks up ITK's resampler (the label)
WARP_SITES = ("monai_sacb.inferers.pair", "monai_sacb.transforms.spatial")
RESAMPLE_SITE = "monai_sacb.transforms.displacement"


def test_one_inference_pass_warps_the_image_once_and_the_label_once(
    tiny_cache, tmp_path, bundle_configs, monkeypatch
):
    """Issue #8 acceptance: inference.json warps the moving image once (the inferer) and resamples the label once
    (the original moving label, by ITK through the saved field: ApplyDisplacementd in the postprocessing, issue
    #10); the network only predicts the ddf, symmetric inference and instance optimisation are off. Every warp,
    every grid_sample and every ITK resampling of the inference iteration (inferer and postprocessing) is
    counted."""
    from ignite.engine import Events

    from monai.bundle import ConfigWorkflow

    pair = bundle_datalist("default", tiny_cache, "validation", num_pairs=1, spacing=bundle_configs.tiny_spacing)[0]
    assert pair.get("moving_label")
    network = _ConstantShift()
    torch.save({"model": network.state_dict()}, tmp_path / "model.pt")
    out = tmp_path / "out"
    overrides = {
        "bundle_root": str(tmp_path),
        "ckpt_path": str(tmp_path / "model.pt"),
        "output_dir": str(out),
        "network_def": network,
        "symmetric": False,
        "io_steps": [0, 0, 0],  # InstanceOptimization returns the network's field unchanged, without a warp
        "moving_image": pair["moving_image"],
        "fixed_image": pair["fixed_image"],
        "moving_label": pair["moving_label"],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = ConfigWorkflow(
            config_file=bundle_configs.inference, meta_file=bundle_configs.meta, workflow_type="infer", **overrides
        )
        workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    assert isinstance(workflow.parser.get_parsed_content("network"), _ConstantShift)

    counting = {"on": False}
    warps, samples = [], []
    grid_sample = torch.nn.functional.grid_sample

    def counted_grid_sample(image, grid, mode="bilinear", *args, **kwargs):
        if counting["on"]:
            samples.append((mode, image.shape[1]))
        return grid_sample(image, grid, mode, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grid_sample", counted_grid_sample)
    from monai_sacb.networks.blocks import numba_kernels

    compiled_sample = numba_kernels.trilinear_warp_  # grid_sample's arithmetic, where numba is installed

    def counted_compiled_sample(image, ddf, *args, **kwargs):
        if counting["on"]:
            samples.append(("bilinear", image.shape[1]))
        return compiled_sample(image, ddf, *args, **kwargs)

    monkeypatch.setattr(numba_kernels, "trilinear_warp_", counted_compiled_sample)
    for site in WARP_SITES:
        module = sys.modules[site]  # imported by the workflow's components
        warp = module.warp_with_ddf

        def counted_warp(image, ddf, *args, _warp=warp, _site=site, **kwargs):
            if counting["on"]:
                warps.append((_site, kwargs.get("mode", args[1] if len(args) > 1 else "bilinear")))
            return _warp(image, ddf, *args, **kwargs)

        monkeypatch.setattr(module, "warp_with_ddf", counted_warp)
    resample_module = sys.modules[RESAMPLE_SITE]
    apply = resample_module.apply_itk_displacement

    def counted_apply(image, field, *args, **kwargs):
        if counting["on"]:
            nearest = kwargs.get("nearest", args[1] if len(args) > 1 else False)
            warps.append((RESAMPLE_SITE, "nearest" if nearest else "linear"))
        return apply(image, field, *args, **kwargs)

    monkeypatch.setattr(resample_module, "apply_itk_displacement", counted_apply)
    # the preprocessing (data loading) runs before ITERATION_STARTED; the inferer and postprocessing inside
    evaluator.add_event_handler(Events.ITERATION_STARTED, lambda _: counting.update(on=True))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: counting.update(on=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            workflow.run()
        finally:
            workflow.finalize()

    assert evaluator.state.iteration == 1
    assert sorted(warps) == [("monai_sacb.inferers.pair", "bilinear"), (RESAMPLE_SITE, "nearest")]
    assert sorted(samples) == [("bilinear", 1)]  # nothing else resamples with grid_sample (or its compiled twin)

    # the saved label is the moving label sampled by nearest neighbour at x + u(x) of the saved field, 0 outside
    # (ITK's default value): the constant one-voxel shift along the first axis, the last slice 0
    stem = "pair_000_moving_image_to_pair_000_fixed_image"
    assert _outputs(out) == [f"{stem}_{name}.nii.gz" for name in ("ddf", "itk_displacement", "warped", "warped_label")]
    ddf = np.asarray(nib.load(out / f"{stem}_ddf.nii.gz").dataobj).reshape(32, 32, 32, 3)
    np.testing.assert_allclose(ddf, np.broadcast_to([1.0, 0.0, 0.0], ddf.shape), atol=1e-6)
    moving_label = np.asarray(nib.load(pair["moving_label"]).dataobj)
    expected = np.concatenate([moving_label[1:], np.zeros_like(moving_label[-1:])], axis=0)
    np.testing.assert_array_equal(np.asarray(nib.load(out / f"{stem}_warped_label.nii.gz").dataobj), expected)
