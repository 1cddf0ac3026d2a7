# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai.data import MetaTensor

from monai_sacb.visualize import as_volume, checkerboard, figure_to_array, label_boundaries, new_figure, save_figure


def test_label_boundaries_marks_labelled_pixels_next_to_another_value():
    label = np.zeros((6, 7), dtype=int)
    label[1:5, 1:4] = 1  # a 4x3 block touching label 2 on its right
    label[1:5, 4:6] = 2
    edge = label_boundaries(label)
    assert not edge[label == 0].any()  # background is never a boundary
    # label 1: every pixel of its rim (10 of 12) is next to 0 or 2; the two inner ones are not
    assert edge[label == 1].sum() == 10
    assert not edge[2, 2] and not edge[3, 2]
    assert edge[label == 2].all()  # a 4x2 block is all rim


def test_checkerboard_alternates_tiles():
    a, b = np.zeros((4, 6)), np.ones((4, 6))
    board = checkerboard(a, b, 2)
    expected = np.array([[0, 0, 1, 1, 0, 0]] * 2 + [[1, 1, 0, 0, 1, 1]] * 2, dtype=float)
    np.testing.assert_array_equal(board, expected)
    np.testing.assert_array_equal(checkerboard(a, b, (4, 3)), np.array([[0, 0, 0, 1, 1, 1]] * 4, dtype=float))
    with pytest.raises(ValueError, match="one shape"):
        checkerboard(a, np.ones((4, 5)))
    with pytest.raises(ValueError, match="positive"):
        checkerboard(a, b, 0)


def test_as_volume_takes_channel_and_batch_dims_off():
    volume = torch.arange(24.0).reshape(2, 3, 4)
    for data in (volume, volume[None], volume[None, None], MetaTensor(volume[None]), volume.numpy()):
        out = as_volume(data)
        assert isinstance(out, np.ndarray) and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, volume.numpy())
    with pytest.raises(ValueError, match="one 3D volume"):
        as_volume(torch.zeros(2, 3, 4, 5))


def test_save_figure_writes_a_palette_png_atomically(tmp_path):
    fig = new_figure((2.0, 1.0), dpi=50)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.linspace(0, 1, 100).reshape(10, 10), cmap="RdBu_r")
    rgb = figure_to_array(fig)
    assert rgb.shape == (50, 100, 3) and rgb.dtype == np.uint8
    path = save_figure(fig, tmp_path / "sub" / "fig.png")
    assert path == str(tmp_path / "sub" / "fig.png")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["fig.png"]  # no temporary file left
    with Image.open(path) as image:
        assert image.mode == "P" and image.size == (100, 50)
    with Image.open(save_figure(fig, tmp_path / "full.png", colours=None)) as image:
        assert image.mode == "RGB"
