# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import csv
import json
import math
import os
import time

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from monai.data import MetaTensor
from monai.engines.utils import IterationEvents

from monai_sacb.handlers import RegistrationReport
from monai_sacb.handlers.registration_report import engine_items, item_spacing, summarize
from monai_sacb.metrics import (
    compute_label_dice,
    compute_label_hausdorff_distance,
    compute_label_surface_distance,
    percent_folding,
    sd_log_jacobian,
)

SPACING = (1.0, 2.0, 3.0)


def _meta(tensor, spacing=SPACING, name=""):
    """A channel-first MetaTensor with a diagonal affine of ``spacing`` (and an origin, which must not matter)."""
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-10.0, 4.0, 7.0])
    return MetaTensor(tensor, affine=affine, meta={"filename_or_obj": name})


def _pair(label_pair, slab_fold, shift=0, moving="mov"):
    """One output item: the label_pair fixture (warped = y_pred, fixed = y), the moving label y shifted along axis
    0 by ``shift``, a ddf that folds a slab, the fixed image as a MetaTensor with the spacing."""
    fixed = label_pair.y[0]
    return {
        "fixed_label": _meta(fixed),
        "moving_label": _meta(fixed.roll(shift, 1)),
        "warped_label": label_pair.y_pred[0],
        "ddf": slab_fold(fixed.shape[1:], axis=0, start=3, stop=5)[0].float(),
        "fixed_image": _meta(torch.zeros_like(fixed, dtype=torch.float32), name="/data/fix.nii.gz"),
        "moving_image": _meta(torch.zeros_like(fixed, dtype=torch.float32), name=f"/data/{moving}.nii.gz"),
    }


def test_item_spacing_reads_the_affine():
    assert item_spacing(_meta(torch.zeros(1, 4, 4, 4))) == pytest.approx(list(SPACING))
    rotated = _meta(torch.zeros(1, 4, 4, 4))
    rotated.affine[:3, :3] = torch.tensor([[0.0, -2.0, 0.0], [1.5, 0.0, 0.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    assert item_spacing(rotated) == pytest.approx([1.5, 2.0, 4.0])
    assert item_spacing(torch.zeros(1, 4, 4, 4)) is None


def test_summarize_skips_nan_and_uses_the_population_std():
    s = summarize([1.0, 2.0, math.nan, 4.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(7 / 3) and s["std"] == pytest.approx(np.std([1, 2, 4]))
    assert s["median"] == 2.0 and s["min"] == 1.0 and s["max"] == 4.0
    assert summarize([math.nan])["n"] == 0 and math.isnan(summarize([])["mean"])


def test_add_pair_gives_the_metrics_module_values(label_pair, slab_fold):
    report = RegistrationReport("unused", label_names={"1": "plate z", 3: "box"})
    item = _pair(label_pair, slab_fold, shift=1)
    row = report.add_pair(item, seconds=0.5)
    y, y_pred, moving = label_pair.y, label_pair.y_pred, item["moving_label"].as_tensor()[None]
    labels = [1, 2, 3, 4]  # present in the fixed map; 9 is only in the prediction
    expected = {
        "dice": compute_label_dice(y_pred, y, labels),
        "hd95": compute_label_hausdorff_distance(y_pred, y, labels, spacing=SPACING),
        "assd": compute_label_surface_distance(y_pred, y, labels, spacing=SPACING),
        "identity_dice": compute_label_dice(moving, y, labels),
        "identity_hd95": compute_label_hausdorff_distance(moving, y, labels, spacing=SPACING),
        "identity_assd": compute_label_surface_distance(moving, y, labels, spacing=SPACING),
    }
    # hand-counted in tests/conftest.py: Dice 0, 0, 0.75, 0; HD95 6, 3 mm, label 4 absent from the prediction
    np.testing.assert_allclose(expected["dice"][0], [0, 0, 0.75, 0])
    np.testing.assert_allclose(expected["hd95"][0, :2], [6.0, 3.0])
    for name, values in expected.items():
        assert row[name] == pytest.approx(float(torch.nanmean(values[0]))), name
    assert row["hd95"] == pytest.approx(np.mean([6.0, 3.0, float(expected["hd95"][0, 2])]))  # label 4 skipped
    assert row["percent_folding"] == pytest.approx(float(percent_folding(item["ddf"][None])[0]))
    assert row["percent_folding"] == pytest.approx(100.0 * 3 / 24)  # slices 3, 4, 5 of 24 along axis 0
    assert row["sd_log_jacobian"] == pytest.approx(float(sd_log_jacobian(item["ddf"][None])[0]))
    assert row["seconds"] == 0.5 and row["num_labels"] == 4
    assert row["pair"] == "pair_000"  # the default name
    assert (row["moving_image"], row["fixed_image"]) == ("/data/mov.nii.gz", "/data/fix.nii.gz")
    assert [e["label"] for e in report.per_label] == labels
    assert [e["name"] for e in report.per_label] == ["plate z", "", "box", ""]
    for j, entry in enumerate(report.per_label):
        for name, values in expected.items():
            value = float(values[0, j])
            assert (math.isnan(entry[name]) and math.isnan(value)) or entry[name] == pytest.approx(value), name
    assert report.unit == "mm"


def test_distances_are_in_voxels_without_a_spacing(label_pair, slab_fold):
    report = RegistrationReport("unused", labels=[1, 2], spacing_key="nothing")
    row = report.add_pair(_pair(label_pair, slab_fold))
    assert row["hd95"] == pytest.approx(np.mean([2.0, 3.0]))  # plates 2 and 3 voxels apart
    assert report.unit == "voxels" and row["num_labels"] == 2


def test_a_pair_without_labels_is_refused_by_name(label_pair, slab_fold):
    item = _pair(label_pair, slab_fold)
    del item["moving_label"]
    with pytest.raises(KeyError, match="'moving_label'.*label maps"):
        RegistrationReport("unused").add_pair(item)


def _engine(outputs, batches=None, sleep=0.0):
    """An engine like MONAI's evaluators: its events, decollated output and batch after each iteration."""

    def step(engine, index):
        time.sleep(sleep)  # the "forward pass"
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.batch = None if batches is None else batches[index]
        return outputs[index]

    engine = Engine(step)
    engine.register_events(*IterationEvents, event_to_attr={})
    return engine


def test_engine_items_merge_batch_and_output():
    engine = Engine(lambda e, b: b)
    engine.state.output = [{"ddf": 1, "label": 2}, {"ddf": 3, "label": 4}]
    engine.state.batch = [{"fixed_label": 5, "label": 0}, {"fixed_label": 6, "label": 0}]
    expected = [{"fixed_label": 5, "ddf": 1, "label": 2}, {"fixed_label": 6, "ddf": 3, "label": 4}]
    assert engine_items(engine) == expected  # the output's "label" wins
    engine.state.output = {"ddf": torch.zeros(2, 3)}  # a dict of batches is decollated
    engine.state.batch = None
    assert [tuple(i["ddf"].shape) for i in engine_items(engine)] == [(3,), (3,)]


def test_the_report_writes_every_file_at_completed(label_pair, slab_fold, tmp_path):
    items = [_pair(label_pair, slab_fold, shift=s, moving=f"mov{s}") for s in (0, 1, 2)]
    # the labels and images come in the batch, the warped label and ddf in the output, as after MONAI's
    # postprocessing; one pair per iteration
    outputs = [[{k: it[k] for k in ("warped_label", "ddf")}] for it in items]
    batches = [[{k: v for k, v in it.items() if k not in ("warped_label", "ddf")}] for it in items]
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"1": "plate z", "2": "plate x", "3": "box", "4": "lost"}))
    report = RegistrationReport(
        tmp_path / "out", description="3 test pairs", method="SACB-Net", label_names=str(names),
        pair_name=lambda item: item["moving_image"].meta["filename_or_obj"][6:-7],
        extra_lines=["Trained on 3 pairs."], model_path="m.pt", device="cpu",
    )  # fmt: skip
    engine = _engine(outputs, batches, sleep=0.02)
    report.attach(engine)
    engine.run(range(3), max_epochs=1)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "figures", "metrics_per_label.csv", "metrics_per_pair.csv", "report.md", "summary.json"
    ]  # fmt: skip
    assert [p.name for p in (out / "figures").iterdir()] == ["dice_per_structure.png"]

    with open(out / "metrics_per_pair.csv") as f:
        pairs = list(csv.DictReader(f))
    assert [p["pair"] for p in pairs] == ["mov0", "mov1", "mov2"]
    for row, item in zip(pairs, items):
        y_pred, y = item["warped_label"][None], item["fixed_label"][None]
        moving = item["moving_label"][None]
        assert float(row["dice"]) == pytest.approx(float(torch.nanmean(compute_label_dice(y_pred, y))))
        assert float(row["identity_dice"]) == pytest.approx(float(torch.nanmean(compute_label_dice(moving, y))))
        hd = compute_label_hausdorff_distance(moving, y, spacing=SPACING)
        assert float(row["identity_hd95"]) == pytest.approx(float(torch.nanmean(hd)))
        assert float(row["seconds"]) >= 0.02
    assert float(pairs[0]["identity_dice"]) == 1.0  # shift 0: the moving label is the fixed one
    with open(out / "metrics_per_label.csv") as f:
        per_label = list(csv.DictReader(f))
    assert len(per_label) == 3 * 4 and per_label[3]["name"] == "lost"
    assert per_label[3]["hd95"] == ""  # label 4 has no surface in the prediction: NaN, an empty cell

    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_pairs"] == 3 and summary["units"]["hd95"] == "mm"
    assert summary["grid"] == {"shape": [24, 20, 20], "spacing": pytest.approx(list(SPACING))}
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean([float(p["dice"]) for p in pairs]))
    identity = [float(p["identity_dice"]) for p in pairs]
    assert summary["metrics"]["identity_dice"]["std"] == pytest.approx(np.std(identity))
    assert summary["per_label"]["4"]["hd95"]["n"] == 0 and summary["per_label"]["4"]["hd95"]["mean"] is None

    report_md = (out / "report.md").read_text()
    lines = report_md.splitlines()
    assert "Data: 3 test pairs" in lines and "Trained on 3 pairs." in lines
    model_line = f"Model: {os.path.abspath('m.pt')}; device: cpu, {torch.get_num_threads()} threads."
    assert model_line in lines
    start = next(i for i, line in enumerate(lines) if line.startswith("| Method"))
    table = lines[start : start + 4]
    assert table[0] == "| Method | Dice | HD95 (mm) | ASSD (mm) | % \\|J\\|<=0 | SDlogJ | s/pair |"
    identity = summary["metrics"]["identity_dice"]
    assert table[2].startswith(f"| Identity (no registration) | {identity['mean']:.3f} ± {identity['std']:.3f} |")
    assert table[2].endswith("| - | - | - |")
    folding = summary["metrics"]["percent_folding"]
    assert table[3].startswith("| SACB-Net | ") and f"{folding['mean']:.3f} ± {folding['std']:.3f}" in table[3]


def test_a_run_without_pairs_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="no pair"):
        RegistrationReport(tmp_path).write()
