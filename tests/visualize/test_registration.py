# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from monai_sacb.metrics import jacobian_determinant, percent_folding
from monai_sacb.visualize import (
    ORIENTATIONS,
    PANEL_COLUMNS,
    log_jacobian,
    registration_panel,
    save_figure,
    slice_centre,
)

SHAPE = (24, 20, 16)


@pytest.fixture
def pair(slab_fold):
    """Images with a bright box, label maps of two boxes, and a ddf that folds a slab of axis 0 (from the
    tests/conftest.py fixture: 4 folded slices of 20 x 16 voxels)."""
    fixed = torch.zeros(1, *SHAPE)
    fixed[:, 4:20, 4:16, 3:13] = 1.0
    label = torch.zeros(1, *SHAPE, dtype=torch.int64)
    label[:, 4:12, 4:16, 3:13] = 1
    label[:, 12:20, 4:16, 3:13] = 2
    ddf = slab_fold(SHAPE, axis=0, start=10, stop=13)[0].float()
    return {"fixed": fixed, "moving": fixed.roll(1, 1), "warped": fixed, "ddf": ddf, "label": label}


def test_log_jacobian_is_that_of_the_metrics(pair):
    log_j, folded = log_jacobian(pair["ddf"])
    det = jacobian_determinant(pair["ddf"][None])[0, 0].numpy()
    np.testing.assert_allclose(log_j, np.log(np.maximum(det, 1e-9)), rtol=1e-6)
    assert folded.sum() == 4 * 20 * 16  # slices 10..13 of axis 0
    assert 100.0 * folded.mean() == pytest.approx(float(percent_folding(pair["ddf"][None])[0]))


def test_slice_centre_is_the_centre_of_the_fixed_label_else_of_the_image():
    image = np.zeros(SHAPE)
    image[2:10, 4:8, 6:16] = 1.0
    label = np.zeros(SHAPE, dtype=int)
    label[10:21, 0:3, 1:2] = 5
    assert slice_centre(image, label) == (15, 1, 1)
    assert slice_centre(image) == (5, 5, 10)
    assert slice_centre(np.zeros(SHAPE)) == (12, 10, 8)


def test_panel_has_three_orientations_by_six_columns_and_names_the_folding(pair, tmp_path):
    fig = registration_panel(
        pair["fixed"], pair["moving"], pair["warped"], pair["ddf"],
        fixed_label=pair["label"], moving_label=pair["label"].roll(1, 1), warped_label=pair["label"],
        spacing=(1.0, 1.0, 2.0), title="a pair",
    )  # fmt: skip
    image_axes = [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    assert len(image_axes) == len(ORIENTATIONS) * len(PANEL_COLUMNS) == 18
    titles = [ax.get_title() for ax in image_axes[: len(PANEL_COLUMNS)]]
    assert titles[:5] == list(PANEL_COLUMNS[:5])
    assert titles[5] == f"log|J|, folds {100 * 4 * 20 * 16 / np.prod(SHAPE):.3f}%"
    rows = [ax.get_ylabel() for ax in image_axes[:: len(PANEL_COLUMNS)]]
    assert rows == ["axial k=7", "coronal j=9", "sagittal i=11"]  # the centre of the fixed label
    assert fig._suptitle.get_text() == "a pair"
    # fixed, moving and warped carry a contour layer over the image; the log|J| column a fold layer where it cuts
    # the slab (axial and coronal planes contain axis 0, the sagittal plane i=11 lies inside the slab)
    assert [len(ax.get_images()) for ax in image_axes[:3]] == [2, 2, 2]
    assert [len(ax.get_images()) for ax in image_axes[5 :: len(PANEL_COLUMNS)]] == [2, 2, 2]
    # the deformed grid column draws lines of p + ddf(p)
    assert image_axes[4].collections and len(image_axes[4].collections[0].get_segments()) > 10
    path = save_figure(fig, tmp_path / "panel.png")
    assert 0 < os.path.getsize(path) < 200_000


def test_panel_without_labels_and_with_batch_dims(pair):
    fig = registration_panel(pair["fixed"][None], pair["moving"], pair["warped"].numpy(), pair["ddf"][None])
    image_axes = [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    assert [len(ax.get_images()) for ax in image_axes[:3]] == [1, 1, 1]  # no contour layer


def test_panel_refuses_volumes_off_the_fixed_grid(pair):
    with pytest.raises(ValueError, match="warped has shape"):
        registration_panel(pair["fixed"], pair["moving"], pair["warped"][:, :-1], pair["ddf"])
    with pytest.raises(ValueError, match="ddf must be on the fixed grid"):
        registration_panel(pair["fixed"], pair["moving"], pair["warped"], pair["ddf"][:, :-1])
    with pytest.raises(ValueError, match=r"ddf must be \(3, \*S\)"):
        registration_panel(pair["fixed"], pair["moving"], pair["warped"], pair["ddf"][:2])
