# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from monai.bundle import ConfigParser
from monai.data import MetaTensor

from monai_sacb.handlers import RegistrationPanelSaver, TensorBoardRegistrationPanels
from monai_sacb.handlers.registration_panels import draw_panel

SHAPE = (16, 16, 16)
TRAIN_JSON = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.json"


def _item(index: int) -> dict:
    """One pair as the bundle's evaluators give it after the postprocessing (channel-first, on the fixed grid)."""
    fixed = torch.zeros(1, *SHAPE)
    fixed[:, 4:12, 4:12, 4:12] = 1.0
    label = (fixed > 0).long() * (1 + index % 2)
    meta = {"filename_or_obj": f"/data/fix{index}.nii.gz"}
    return {
        "fixed_image": MetaTensor(fixed, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])), meta=meta),
        "moving_image": fixed.roll(1, 1),
        "warped_image": fixed,
        "ddf": torch.zeros(3, *SHAPE),
        "fixed_label": label,
        "moving_label": label.roll(1, 1),
        "warped_label": label,
    }


def _engine(iterations: int, per_iteration: int = 1) -> Engine:
    def step(engine, index):
        items = [_item(index * per_iteration + i) for i in range(per_iteration)]
        engine.state.batch = [{k: v for k, v in it.items() if k in ("fixed_image", "moving_image")} for it in items]
        return [{k: v for k, v in it.items() if k not in ("fixed_image", "moving_image")} for it in items]

    engine = Engine(step)
    engine.iterations = iterations
    return engine


def test_draw_panel_titles_the_pair_with_its_dice():
    fig = draw_panel(_item(0), "p0")
    assert fig._suptitle.get_text() == "p0    Dice 1.000 (no registration 0.875)"  # 7 of 8 slices overlap
    item = _item(0)
    del item["fixed_label"]
    assert draw_panel(item, "p0")._suptitle.get_text() == "p0"  # no labels: no Dice
    del item["ddf"]
    with pytest.raises(KeyError, match="'ddf'"):
        draw_panel(item, "p0")


def test_panel_saver_writes_the_first_pairs_of_each_run(tmp_path):
    saver = RegistrationPanelSaver(
        tmp_path / "figures", max_pairs=3, pair_name=lambda item: item["fixed_image"].meta["filename_or_obj"][6:10]
    )
    engine = _engine(iterations=2, per_iteration=2)
    saver.attach(engine)
    engine.run(range(2), max_epochs=1)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["fix0.png", "fix1.png", "fix2.png"]
    assert saver.written == [str(tmp_path / "figures" / f"fix{i}.png") for i in range(3)]
    with Image.open(saver.written[0]) as image:
        assert image.mode == "P" and image.size[0] > 400
    engine.run(range(2), max_epochs=2)  # a second run starts counting again
    assert len(saver.written) == 3


class _Writer:
    def __init__(self):
        self.images = []

    def add_image(self, tag, image, step, dataformats):
        self.images.append((tag, image.shape, image.dtype, step, dataformats))

    def flush(self):
        pass


def test_tensorboard_panels_at_the_trainer_epoch():
    writer = _Writer()
    handler = TensorBoardRegistrationPanels(summary_writer=writer, max_pairs=2)
    engine = _engine(iterations=3)
    handler.attach(engine)
    engine.run(range(3), max_epochs=1)
    engine.run(range(3), max_epochs=2)  # what ValidationHandler does at the trainer's second epoch
    assert [(tag, step) for tag, *_, step, _ in writer.images] == [
        ("registration/pair_000", 1), ("registration/pair_001", 1), ("registration/pair_000", 2),
        ("registration/pair_001", 2),
    ]  # fmt: skip
    tag, shape, dtype, step, dataformats = writer.images[0]
    assert len(shape) == 3 and shape[2] == 3 and dtype == np.uint8 and dataformats == "HWC"
    nothing = _Writer()
    TensorBoardRegistrationPanels(summary_writer=nothing, max_pairs=0).attach(engine)
    engine.run(range(3), max_epochs=3)
    assert nothing.images == []
    with pytest.raises(ValueError, match="max_pairs"):
        TensorBoardRegistrationPanels(summary_writer=nothing, max_pairs=-1)


def test_train_json_lists_the_panels_in_validation_on_the_main_process_only(tmp_path):
    parser = ConfigParser()
    parser.read_config(str(TRAIN_JSON))
    parser["output_dir"] = str(tmp_path)
    ids = [
        i for i, h in enumerate(parser["validate"]["handlers"])
        if isinstance(h, dict) and h["_target_"].endswith("TensorBoardRegistrationPanels")
    ]  # fmt: skip
    assert len(ids) == 1
    handler = parser.get_parsed_content(f"validate#handlers#{ids[0]}")
    assert isinstance(handler, TensorBoardRegistrationPanels) and handler.max_pairs == 2
    assert handler._writer.log_dir == str(tmp_path)  # beside the TensorBoard scalars
    handler.close()
    parser["main_process"] = False
    assert parser.get_parsed_content(f"validate#handlers#{ids[0]}", lazy=False) is None
