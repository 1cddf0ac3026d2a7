# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
evaluate.json on the tiny default data (8 mm, 32^3 voxels) with the shipped network: every file is written, and the
numbers in the CSVs are those of monai_sacb.metrics on the fields the evaluator made (captured during the run).
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events

from monai.bundle import ConfigWorkflow

from monai_sacb.apps import bundle_datalist, bundle_label_names
from monai_sacb.metrics import (
    compute_label_dice,
    compute_label_hausdorff_distance,
    compute_label_surface_distance,
    percent_folding,
    sd_log_jacobian,
)

NUM_PAIRS = 2
IO_STEPS = [0, 4, 2]  # a little instance optimisation: the field the report measures is the refined one


def _evaluate(bundle_configs, out: Path, capture: list | None = None, **overrides):
    """Run evaluate.json; ``capture`` receives the label maps and ddf of every pair as the evaluator made them."""
    settings = {
        "bundle_root": str(out.parent),
        "ckpt_path": str(bundle_configs.root / "models" / "model.pt"),
        "output_dir": str(out),
        "num_pairs": NUM_PAIRS,
        "io_steps": IO_STEPS,
        "network_def#kmeans_iters": 3,
        **overrides,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow = ConfigWorkflow(
            config_file=str(bundle_configs.root / "configs" / "evaluate.json"),
            meta_file=bundle_configs.meta,
            workflow_type="infer",
            **settings,
        )
        workflow.initialize()
        evaluator = workflow.parser.get_parsed_content("evaluator")
        if capture is not None:

            @evaluator.on(Events.ITERATION_COMPLETED)
            def _keep(engine):
                for batch, output in zip(engine.state.batch, engine.state.output):
                    capture.append(
                        {
                            "fixed_label": batch["fixed_label"].detach().clone(),
                            "moving_label": batch["moving_label"].detach().clone(),
                            "warped_label": output["warped_label"].detach().cpu().clone(),
                            "ddf": output["ddf"].detach().cpu().clone(),
                        }
                    )

        try:
            workflow.run()
        finally:
            workflow.finalize()
    return evaluator


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, tiny_cache, bundle_configs):
    out = tmp_path_factory.mktemp("evaluate") / "out"
    captured: list[dict] = []
    evaluator = _evaluate(
        bundle_configs, out, captured, data_format="default", dataset_dir=str(tiny_cache),
        spacing=bundle_configs.tiny_spacing, num_panels=1, save_fields=True,
    )  # fmt: skip
    spacing = bundle_configs.tiny_spacing
    pairs = bundle_datalist("default", tiny_cache, "validation", num_pairs=NUM_PAIRS, spacing=spacing)

    def rows(name):
        with open(out / name, newline="") as f:
            return list(csv.DictReader(f))

    return {
        "out": out,
        "captured": captured,
        "evaluator": evaluator,
        "pairs": pairs,
        "per_pair": rows("metrics_per_pair.csv"),
        "per_label": rows("metrics_per_label.csv"),
        "summary": json.loads((out / "summary.json").read_text()),
        "report": (out / "report.md").read_text(),
    }


def _stem(path):
    return os.path.basename(path).replace(".nii.gz", "")


def test_every_file_is_written(evaluation):
    out = evaluation["out"]
    first = evaluation["pairs"][0]
    name = f"{_stem(first['moving_image'])}_to_{_stem(first['fixed_image'])}"
    assert sorted(p.name for p in out.iterdir()) == [
        "fields", "figures", "metrics_per_label.csv", "metrics_per_pair.csv", "report.md", "summary.json"
    ]  # fmt: skip
    # num_panels=1: the panel of the first pair, and the box plot of the data set
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted([f"{name}.png", "dice_per_structure.png"])
    for png in (out / "figures").iterdir():
        assert 0 < png.stat().st_size < 200_000
    names = [f"{_stem(p['moving_image'])}_to_{_stem(p['fixed_image'])}" for p in evaluation["pairs"]]
    assert [row["pair"] for row in evaluation["per_pair"]] == names
    assert [row["fixed_image"] for row in evaluation["per_pair"]] == [p["fixed_image"] for p in evaluation["pairs"]]


def _close(csv_value: str, value: float) -> bool:
    return (csv_value == "" and math.isnan(value)) or float(csv_value) == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_csv_numbers_are_the_metrics_of_the_evaluated_fields(evaluation, bundle_configs):
    captured, per_label = evaluation["captured"], evaluation["per_label"]
    assert len(captured) == NUM_PAIRS == len(evaluation["per_pair"])
    spacing = bundle_configs.tiny_spacing  # the network grid of the tiny data: 8 mm voxels
    start = 0
    for fields, pair_row, files in zip(captured, evaluation["per_pair"], evaluation["pairs"]):
        fixed, moving = fields["fixed_label"][None], fields["moving_label"][None]
        warped, ddf = fields["warped_label"][None], fields["ddf"][None]
        # the fixed label on the network grid is the file's (tiny data: no resampling, no padding)
        np.testing.assert_array_equal(fixed[0, 0].numpy(), np.asarray(nib.load(files["fixed_label"]).dataobj))
        labels = [int(v) for v in torch.unique(fixed) if v > 0]
        rows = per_label[start : start + len(labels)]
        start += len(labels)
        assert [int(r["label"]) for r in rows] == labels and int(pair_row["num_labels"]) == len(labels)
        expected = {
            "dice": compute_label_dice(warped, fixed, labels),
            "hd95": compute_label_hausdorff_distance(warped, fixed, labels, spacing=spacing),
            "assd": compute_label_surface_distance(warped, fixed, labels, spacing=spacing),
            "identity_dice": compute_label_dice(moving, fixed, labels),
            "identity_hd95": compute_label_hausdorff_distance(moving, fixed, labels, spacing=spacing),
            "identity_assd": compute_label_surface_distance(moving, fixed, labels, spacing=spacing),
        }
        for name, values in expected.items():
            for j, row in enumerate(rows):
                assert _close(row[name], float(values[0, j])), (name, row["label"])
            assert _close(pair_row[name], float(torch.nanmean(values[0]))), name
        # Dice by hand, to be sure the module's count is the textbook one
        w, f = warped.numpy(), fixed.numpy()
        by_hand = np.mean([2 * np.sum((w == v) & (f == v)) / (np.sum(w == v) + np.sum(f == v)) for v in labels])
        assert float(pair_row["dice"]) == pytest.approx(by_hand, rel=1e-5)
        assert _close(pair_row["percent_folding"], float(percent_folding(ddf)[0]))
        assert _close(pair_row["sd_log_jacobian"], float(sd_log_jacobian(ddf)[0]))
        assert 0 < float(pair_row["seconds"]) < 60
    assert start == len(per_label)
    # the evaluator's own key metric (LabelDice on the same warped labels) agrees with the report
    mean_dice = np.mean([float(r["dice"]) for r in evaluation["per_pair"]])
    assert evaluation["evaluator"].state.metrics["mean_dice"] == pytest.approx(mean_dice, rel=1e-5)


def test_saved_fields_are_the_evaluated_fields_on_the_fixed_grid(evaluation):
    """save_fields: the MONAI ddf (voxels of the fixed file's grid) and the ITK field of every pair in fields/."""
    fields = evaluation["out"] / "fields"
    for pair, captured in zip(evaluation["pairs"], evaluation["captured"]):
        stem = f"{_stem(pair['moving_image'])}_to_{_stem(pair['fixed_image'])}"
        fixed = nib.load(pair["fixed_image"])
        ddf = nib.load(fields / f"{stem}_ddf.nii.gz")
        itk_field = nib.load(fields / f"{stem}_itk_displacement.nii.gz")
        for image in (ddf, itk_field):
            np.testing.assert_allclose(image.affine, fixed.affine, atol=1e-4)
            assert image.shape[:3] == fixed.shape
        # the tiny data are RAS and already on the network grid: the saved ddf is the evaluated one
        saved = np.moveaxis(np.asarray(ddf.dataobj).reshape(*fixed.shape, 3), -1, 0)
        np.testing.assert_allclose(saved, captured["ddf"].numpy(), atol=1e-4)


def test_labels_are_named_after_the_data(evaluation, tiny_cache, bundle_configs):
    names = bundle_label_names("default", tiny_cache, num_pairs=NUM_PAIRS, spacing=bundle_configs.tiny_spacing)
    assert names and all(row["name"] == names[row["label"]] for row in evaluation["per_label"])


def test_summary_and_report_table(evaluation, bundle_configs):
    summary, per_pair = evaluation["summary"], evaluation["per_pair"]
    assert summary["num_pairs"] == NUM_PAIRS and summary["units"]["hd95"] == "mm"
    assert summary["grid"]["spacing"] == [bundle_configs.tiny_spacing] * 3 and summary["grid"]["shape"] == [32] * 3
    for name in ("dice", "hd95", "assd", "percent_folding", "sd_log_jacobian", "seconds", "identity_dice"):
        values = [float(r[name]) for r in per_pair]
        assert summary["metrics"][name]["mean"] == pytest.approx(np.mean(values)), name
        assert summary["metrics"][name]["std"] == pytest.approx(np.std(values), abs=1e-7), name
    lines = evaluation["report"].splitlines()
    data = [line for line in lines if line.startswith("Data: ")]
    assert len(data) == 1 and f"{NUM_PAIRS} pairs of data format 'default'" in data[0]
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))  # the first table
    header, _, identity, method = lines[start : start + 4]
    assert header == "| Method | Dice | HD95 (mm) | ASSD (mm) | % \\|J\\|<=0 | SDlogJ | s/pair |"
    m = summary["metrics"]
    assert identity == (
        f"| Identity (no registration) | {m['identity_dice']['mean']:.3f} ± {m['identity_dice']['std']:.3f} | "
        f"{m['identity_hd95']['mean']:.2f} ± {m['identity_hd95']['std']:.2f} | "
        f"{m['identity_assd']['mean']:.2f} ± {m['identity_assd']['std']:.2f} | - | - | - |"
    )
    cells = [c.strip() for c in method.strip("|").split("|")]
    assert cells[0] == f"SACB-Net, symmetric, cropped to the foreground, instance optimisation {IO_STEPS} steps"
    assert cells[1] == f"{m['dice']['mean']:.3f} ± {m['dice']['std']:.3f}"
    assert cells[4] == f"{m['percent_folding']['mean']:.3f} ± {m['percent_folding']['std']:.3f}"
    assert cells[6] == f"{m['seconds']['mean']:.2f} ± {m['seconds']['std']:.2f}"


def test_pairs_without_labels_fail_before_anything_runs(tmp_path, bundle_configs, error_chain):
    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        image = np.random.default_rng(i).uniform(size=(32, 32, 32)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), data / f"subject_{i}.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        _evaluate(bundle_configs, out, data_format="folder", dataset_dir=str(data))
    message = error_chain(info)
    assert "have no label maps" in message and "labels/ folder" in message and "evaluate.json" in message
    assert not out.exists()  # nothing was registered or written
