# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Displacement fields in world millimetres and as ITK files (issue #10, part 3): the conversions, the ITK writer,
reader and applier, the approximate inverse, and inference.json's postprocessing end to end, checked against
ITK's own resampling (and ANTs', when antspyx is installed) on fixed images that are RAS, LPS or oblique, with and
without ``--spacing``.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, DivisiblePadd, Invertd, Orientationd, Spacingd

from monai_sacb.networks.blocks import warp_with_ddf
from monai_sacb.transforms import (
    DDFToVoxelsd,
    DDFToWorldd,
    SaveITKDisplacementd,
    apply_itk_displacement,
    ddf_voxels_to_world,
    ddf_world_to_voxels,
    invert_ddf,
    invert_itk_displacement,
    load_itk_displacement,
    pair_name_formatter,
    ras_to_lps_vectors,
    save_itk_displacement,
)

itk = pytest.importorskip("itk")

INFERENCE_JSON = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "inference.json"
LPS = np.diag([-1.0, -1.0, 1.0])


# ------------------------------------------------------------------------------------------------ geometry


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[j, j], r[i, j], r[j, i] = c, c, -s, s
    return r


def _affine(linear, shape, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxel -> RAS mm affine with linear part ``linear`` whose grid of ``shape`` is centred on ``centre``."""
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = np.asarray(centre) - a[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return a


# an oblique acquisition: array axes near A, I and L (as a sagittal scan stores them), rotated by 12 and 20 degrees,
# anisotropic voxels
OBLIQUE = _rotation(2, 20) @ _rotation(0, -12) @ np.array([[0, 0, -1.0], [1, 0, 0], [0, -1, 0]])
OBLIQUE = OBLIQUE @ np.diag([1.5, 2.2, 1.8])


def _points(affine, shape) -> np.ndarray:
    """(3, N) RAS mm of the voxels of a grid, in C order of the array index (X, Y, Z)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1).astype(np.float64)
    return affine[:3, :3] @ index + affine[:3, 3:]


def _world_field(x: np.ndarray) -> np.ndarray:
    """The known deformation, (3, N) RAS mm -> (3, N) RAS mm: a small affine part plus sinusoids of 2 mm and 40 mm
    wavelength (smooth and invertible: derivatives below 0.4)."""
    y = x - np.array([[0.0], [5.0], [-3.0]])
    linear = np.array([[0.04, -0.03, 0.02], [0.02, 0.05, -0.04], [-0.03, 0.01, 0.03]])
    k = 2 * np.pi / 40.0
    waves = np.stack(
        [2.0 * np.sin(k * y[1] + 0.3), -1.5 * np.sin(k * y[2] + 0.5) * np.cos(k * y[0]), 1.8 * np.cos(k * y[0] - 0.2)]
    )
    return linear @ y + waves


def _moving_intensity(x: np.ndarray) -> np.ndarray:
    """An affine function of the RAS position: every (tri)linear interpolation reproduces it exactly."""
    return 0.9 * x[0] + 0.37 * x[1] - 0.61 * x[2] + 50.0


def _moving_labels(x: np.ndarray) -> np.ndarray:
    r = np.linalg.norm(x - np.array([[6.0], [4.0], [-2.0]]), axis=0)
    labels = np.zeros(x.shape[1], np.int16)
    labels[r < 14] = 1
    labels[(r < 14) & (x[0] + 0.5 * x[2] > 5)] = 2
    labels[(r >= 14) & (x[1] > 8)] = 3
    return labels


def _lattice(fixed_affine, fixed_shape, pad=4):
    """A moving grid on the fixed image's lattice, ``pad`` voxels larger on every side, stored in another array
    order (axes flipped and permuted): resampling onto the fixed grid moves no voxel off a lattice point."""
    a = fixed_affine.copy()
    a[:3, 3] -= a[:3, :3] @ np.full(3, pad)
    shape = np.asarray(fixed_shape) + 2 * pad
    for k in (0, 1):
        a[:3, 3] += a[:3, k] * (shape[k] - 1)
        a[:3, k] *= -1
    perm = [2, 0, 1]
    a[:3, :3] = a[:3, :3][:, perm]
    return a, tuple(int(n) for n in shape[perm])


ROTATED_MOVING = (_affine(_rotation(1, 8) @ np.diag([1.7, 1.7, 1.7]), (48, 48, 48)), (48, 48, 48))

# name: fixed affine, fixed shape, --spacing, moving grid ("lattice": the fixed lattice in another array order;
# "rotated": 1.7 mm voxels rotated by 8 degrees)
CASES = {
    "ras_iso": (_affine(np.diag([2.0, 2.0, 2.0]), (24, 22, 22), (1, 2, -1)), (24, 22, 22), None, "lattice"),
    "lps_aniso": (_affine(np.diag([-1.6, -1.8, 2.4]), (26, 24, 18), (2, -1, 1)), (26, 24, 18), None, "lattice"),
    "oblique_aniso": (_affine(OBLIQUE, (28, 20, 24)), (28, 20, 24), None, "lattice"),
    "ras_iso_rotated_moving": (_affine(np.diag([2.0, 2.0, 2.0]), (24, 22, 22)), (24, 22, 22), None, "rotated"),
    "lps_aniso_spacing": (_affine(np.diag([-1.6, -1.8, 2.4]), (26, 24, 18), (2, -1, 1)), (26, 24, 18), 2.0, "rotated"),
    "oblique_aniso_spacing": (_affine(OBLIQUE, (28, 20, 24)), (28, 20, 24), 2.2, "rotated"),
}


def _itk_array(image) -> np.ndarray:
    """A scalar 3D ITK image as an (X, Y, Z) array (the NIfTI array order)."""
    return itk.array_from_image(image).T


def _write(array, affine, path) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


# -------------------------------------------------------------------------------------------- conversions


def test_voxels_to_world_and_back_on_an_oblique_grid():
    affine = _affine(OBLIQUE, (5, 6, 7), (3.0, -2.0, 1.0))
    ddf = torch.zeros(3, 5, 6, 7)
    ddf[0, 1, 2, 3], ddf[1, 2, 2, 2], ddf[2, 4, 5, 6] = 1.0, 2.0, -0.5
    world = ddf_voxels_to_world(ddf, torch.as_tensor(affine))
    assert world.dtype == torch.float32 and world.shape == ddf.shape
    np.testing.assert_allclose(world[:, 1, 2, 3].numpy(), affine[:3, 0], atol=1e-6)  # one voxel along axis 0
    np.testing.assert_allclose(world[:, 2, 2, 2].numpy(), 2 * affine[:3, 1], atol=1e-6)
    np.testing.assert_allclose(world[:, 4, 5, 6].numpy(), -0.5 * affine[:3, 2], atol=1e-6)
    assert torch.count_nonzero(world.abs().sum(0)) == 3
    back = ddf_world_to_voxels(world, affine)
    torch.testing.assert_close(back, ddf, atol=1e-6, rtol=0)
    # numpy in, numpy out; float64 kept; a MetaTensor gives a plain tensor
    as_numpy = ddf_voxels_to_world(ddf.double().numpy(), affine)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float64
    np.testing.assert_allclose(as_numpy, world.double().numpy(), atol=1e-6)
    plain = ddf_voxels_to_world(MetaTensor(ddf, affine=torch.as_tensor(affine)), affine)
    assert type(plain) is torch.Tensor
    with pytest.raises(ValueError, match="spatial_dims"):
        ddf_voxels_to_world(ddf[None], affine)  # no batch dimension


def test_ras_to_lps_flips_the_first_two_components():
    field = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 2, 2)
    lps = ras_to_lps_vectors(field)
    assert lps[:, 0, 0, 0].tolist() == [-0.0, -1.0, 2.0]
    torch.testing.assert_close(ras_to_lps_vectors(lps), field)


@pytest.fixture
def lps_image():
    """(1, 10, 9, 8) MetaTensor of an LPS-oriented, anisotropic image, and its affine."""
    affine = _affine(np.diag([-1.6, -1.8, 2.4]), (10, 9, 8), (1.0, 2.0, -3.0))
    return MetaTensor(torch.rand(1, 10, 9, 8), affine=torch.as_tensor(affine)), affine


def test_ddf_to_world_takes_the_reference_grid_and_its_history(lps_image):
    image, _ = lps_image
    preprocessed = Orientationd("fixed_image", axcodes="RAS", labels=None)({"fixed_image": image})["fixed_image"]
    assert preprocessed.applied_operations
    ddf = torch.randn(3, *preprocessed.shape[1:])
    out = DDFToWorldd("ddf", ref_key="fixed_image")({"ddf": ddf, "fixed_image": preprocessed})["ddf"]
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, preprocessed.affine)
    assert [op["class"] for op in out.applied_operations] == ["Orientation"]
    expected = torch.einsum("ij,j...->i...", preprocessed.affine[:3, :3].float(), ddf)
    torch.testing.assert_close(out.as_tensor(), expected, atol=1e-5, rtol=1e-5)
    # to voxels of the same grid and back; output_keys keep the input
    d = DDFToVoxelsd("ddf", output_keys="voxels")({"ddf": out})
    torch.testing.assert_close(d["voxels"].as_tensor(), ddf, atol=1e-5, rtol=1e-5)
    assert d["ddf"] is out
    with pytest.raises(ValueError, match="spatial shape"):
        DDFToWorldd("ddf", ref_key="fixed_image")({"ddf": ddf[:, :-1], "fixed_image": preprocessed})
    with pytest.raises(TypeError, match="ref_key"):
        DDFToWorldd("ddf")({"ddf": ddf})  # a plain tensor has no grid


def test_world_field_survives_invertd_where_a_voxel_ddf_does_not(lps_image):
    """Reorientation, --spacing and padding undone by Invertd: the world field, converted to voxels of the fixed
    grid afterwards, is the known ddf there (an affine world field: linear resampling keeps it exactly); the
    voxel ddf resampled as intensities (what inference.json did before) is not."""
    image, affine = lps_image
    pre = Compose(
        [
            Orientationd("fixed_image", axcodes="RAS", labels=None),
            Spacingd("fixed_image", pixdim=2.0),
            DivisiblePadd("fixed_image", k=16),
        ]
    )
    d = pre({"fixed_image": image})
    net = d["fixed_image"].affine.numpy()
    linear = np.array([[0.05, -0.02, 0.01], [0.03, 0.02, -0.04], [0.01, 0.06, 0.02]])

    def field(x):
        return linear @ x + np.array([[1.0], [-2.0], [0.5]])

    shape = d["fixed_image"].shape[1:]
    d["ddf"] = torch.as_tensor(np.linalg.solve(net[:3, :3], field(_points(net, shape))).reshape(3, *shape)).float()
    invert = Invertd("ddf", pre, orig_keys="fixed_image", nearest_interp=False)
    naive = invert({**d, "ddf": MetaTensor(d["ddf"])})["ddf"]
    d = DDFToVoxelsd("ddf")(invert(DDFToWorldd("ddf", ref_key="fixed_image")(d)))
    out = d["ddf"]
    np.testing.assert_allclose(out.affine.numpy(), affine, atol=1e-5)
    expected = np.linalg.solve(affine[:3, :3], field(_points(affine, image.shape[1:]))).reshape(3, *image.shape[1:])
    inner = (slice(None), *[slice(1, -1)] * 3)  # the 2 mm grid does not reach the last 1.6-2.4 mm voxels
    np.testing.assert_allclose(out.numpy()[inner], expected[inner], atol=2e-4)
    assert np.abs(naive.numpy() - expected)[inner].max() > 0.5  # the old way: other axes, signs and units


# ------------------------------------------------------------------------------------------------- ITK files


def test_itk_file_is_an_lps_vector_nifti_on_the_fixed_grid(tmp_path):
    affine = _affine(OBLIQUE, (5, 6, 7), (3.0, -2.0, 1.0))
    field = torch.randn(3, 5, 6, 7)
    path = tmp_path / "field.nii.gz"
    save_itk_displacement(field, affine, path)
    nii = nib.load(path)
    assert nii.shape == (5, 6, 7, 1, 3) and nii.header.get_intent()[0] == "vector"
    assert nii.get_data_dtype() == np.float32
    np.testing.assert_allclose(nii.affine, affine, atol=1e-4)
    data = np.asarray(nii.dataobj)[:, :, :, 0]  # (X, Y, Z, 3)
    lps = (LPS @ field.numpy().reshape(3, -1)).reshape(3, 5, 6, 7)
    np.testing.assert_allclose(np.moveaxis(data, -1, 0), lps, atol=1e-6)
    # ITK reads a vector image with the fixed grid's geometry in LPS
    image = itk.imread(str(path))
    assert image.GetNumberOfComponentsPerPixel() == 3
    lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    np.testing.assert_allclose(np.asarray(image.GetOrigin()), lps_affine[:3, 3], atol=1e-4)
    spacing = np.asarray(image.GetSpacing())
    np.testing.assert_allclose(spacing, np.linalg.norm(affine[:3, :3], axis=0), atol=1e-5)
    np.testing.assert_allclose(itk.array_from_matrix(image.GetDirection()) * spacing, lps_affine[:3, :3], atol=1e-4)
    # and the transform maps the fixed point x (LPS mm) to x + u_LPS(x)
    transform = itk.DisplacementFieldTransform[itk.F, 3].New()
    transform.SetDisplacementField(image)
    index = (1, 2, 3)
    x = lps_affine[:3, :3] @ np.asarray(index, float) + lps_affine[:3, 3]
    moved = np.asarray(transform.TransformPoint(x.tolist()))
    np.testing.assert_allclose(moved, x + LPS @ field[:, 1, 2, 3].numpy(), atol=1e-4)
    # the reader gives the RAS field and the affine back
    back = load_itk_displacement(path)
    torch.testing.assert_close(back.as_tensor(), field, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-4)


def test_save_itk_displacementd_names_the_file_like_the_other_outputs(tmp_path):
    affine = _affine(np.diag([-2.0, 2.0, 2.0]), (6, 5, 4))
    field = MetaTensor(torch.randn(3, 6, 5, 4), affine=torch.as_tensor(affine), meta={"filename_or_obj": "a_to_b"})
    before = field.clone()
    saver = SaveITKDisplacementd(
        "ddf", output_dir=tmp_path, separate_folder=False, output_name_formatter=pair_name_formatter, print_log=False
    )
    d = saver({"ddf": field})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_to_b_itk_displacement.nii.gz"]
    torch.testing.assert_close(d["ddf"], before)  # the data stay RAS
    written = load_itk_displacement(tmp_path / "a_to_b_itk_displacement.nii.gz")
    torch.testing.assert_close(written.as_tensor(), field.as_tensor(), atol=1e-6, rtol=0)
    assert nib.load(tmp_path / "a_to_b_itk_displacement.nii.gz").shape == (6, 5, 4, 1, 3)
    with pytest.raises(ValueError, match="MetaTensor"):
        saver({"ddf": torch.zeros(3, 6, 5, 4)})


def test_apply_itk_displacement_identity_and_one_voxel_shift(tmp_path):
    affine = _affine(np.diag([-2.0, -2.0, 3.0]), (8, 7, 6))
    rng = np.random.default_rng(0)
    image = _write(rng.random((8, 7, 6)).astype(np.float32), affine, tmp_path / "image.nii.gz")
    labels = rng.integers(0, 5, (8, 7, 6)).astype(np.int16)
    label = _write(labels, affine, tmp_path / "label.nii.gz")
    zero = tmp_path / "zero.nii.gz"
    save_itk_displacement(torch.zeros(3, 8, 7, 6), affine, zero)
    out = apply_itk_displacement(image, zero)
    np.testing.assert_allclose(_itk_array(out), np.asarray(nib.load(image).dataobj), atol=1e-6)
    out = apply_itk_displacement(label, zero, nearest=True, output_path=tmp_path / "out" / "label.nii.gz")
    assert itk.array_from_image(out).dtype == np.int16
    np.testing.assert_array_equal(_itk_array(out), labels)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "out" / "label.nii.gz").dataobj), labels)
    # one voxel along array axis 0 (-2 mm in R): out[i] = image[i + 1], the default value past the end
    shift = torch.zeros(3, 8, 7, 6)
    shift[0] = -2.0
    save_itk_displacement(shift, affine, tmp_path / "shift.nii.gz")
    out = _itk_array(apply_itk_displacement(label, tmp_path / "shift.nii.gz", nearest=True, default_value=9))
    np.testing.assert_array_equal(out[:-1], labels[1:])
    assert (out[-1] == 9).all()
    # another output grid: the reference's
    reference = _write(np.zeros((4, 7, 6), np.float32), affine, tmp_path / "reference.nii.gz")
    assert _itk_array(apply_itk_displacement(image, zero, reference=reference)).shape == (4, 7, 6)
    with pytest.raises(FileNotFoundError, match="missing"):
        apply_itk_displacement(tmp_path / "missing.nii.gz", zero)
    monai_ddf = _write(np.zeros((8, 7, 6, 3), np.float32), affine, tmp_path / "ddf.nii.gz")  # voxels: not ITK's
    with pytest.raises(ValueError, match="not an ITK displacement field"):
        apply_itk_displacement(image, monai_ddf)


def _itk_image(array: np.ndarray, origin, spacing, direction, vector: bool = False):
    ttype = itk.Image[itk.Vector[itk.F, 3], 3] if vector else None
    image = itk.image_from_array(np.ascontiguousarray(array), ttype=ttype) if vector else itk.image_from_array(array)
    image.SetOrigin([float(v) for v in origin])
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction, dtype=np.float64)))
    return image


@pytest.mark.parametrize("nearest", [True, False])
def test_apply_itk_displacement_on_the_field_grid_equals_the_transform_route(nearest):
    """
    On the field's own grid apply_itk_displacement uses itk.WarpImageFilter, elsewhere DisplacementFieldTransform +
    ResampleImageFilter (what antsApplyTransforms runs). Both routes give the same voxels: oblique grids of
    different geometry, random fields, exact ties (a moving grid half a voxel off, zero and half-voxel fields), 2D.
    """
    from monai_sacb.transforms import displacement

    rng = np.random.default_rng(3)
    cases = []
    for trial in range(6):
        moving_grid = (rng.normal(0, 3, 3), rng.uniform(0.8, 2.2, 3), _rotation(trial % 3, rng.uniform(-30, 30)))
        field_grid = (rng.normal(0, 3, 3), rng.uniform(0.8, 2.2, 3), _rotation(2 - trial % 3, rng.uniform(-30, 30)))
        vectors = rng.normal(0, 2.0, (10, 12, 8, 3)) if trial % 3 else np.zeros((10, 12, 8, 3))
        cases.append((moving_grid, field_grid, vectors))
    for offset, value in [(0.5, 0.0), (0.0, 0.5), (0.5, -1.0)]:
        unit_grid = ([0.0] * 3, [1.0] * 3, np.eye(3))
        cases.append((([offset] * 3, [1.0] * 3, np.eye(3)), unit_grid, np.full((10, 12, 8, 3), value)))

    def both_routes(moving, field):
        """(apply_itk_displacement's output, DisplacementFieldTransform + ResampleImageFilter's) as arrays."""
        ours = itk.array_from_image(apply_itk_displacement(moving, field, nearest=nearest, default_value=9.0))
        interpolator = (
            itk.NearestNeighborInterpolateImageFunction if nearest else itk.LinearInterpolateImageFunction
        )[type(moving), itk.D].New()
        disp = displacement._itk_displacement_field(field)
        theirs = itk.array_from_image(displacement._resample_with_transform(moving, disp, disp, interpolator, 9.0))
        return ours, theirs

    for moving_grid, field_grid, vectors in cases:
        labels = rng.integers(0, 6, (9, 11, 7)).astype(np.float64)
        moving = _itk_image(labels if nearest else labels.astype(np.float32), *moving_grid)
        field = _itk_image(vectors.astype(np.float32), *field_grid, vector=True)
        ours, theirs = both_routes(moving, field)
        np.testing.assert_array_equal(ours, theirs)
        assert (ours == 9.0).any() and (ours != 9.0).any()  # some points fall outside, most inside
    # a field that float32 cannot hold exactly takes the transform route (and still works)
    fine_vectors = itk.image_from_array(np.full((10, 12, 8, 3), 0.1, np.float64), is_vector=True)
    assert displacement._float32_vector_field(fine_vectors) is None
    assert itk.array_from_image(apply_itk_displacement(moving, fine_vectors, nearest=nearest)).shape == (10, 12, 8)
    # 2D: the same
    moving = itk.image_from_array(rng.integers(0, 6, (9, 11)).astype(np.float64 if nearest else np.float32))
    moving.SetOrigin([0.3, -1.0])
    moving.SetSpacing([1.3, 0.9])
    vectors = rng.normal(0, 1.5, (10, 12, 2)).astype(np.float32)
    field = itk.image_from_array(vectors, ttype=itk.Image[itk.Vector[itk.F, 2], 2])
    field.SetSpacing([1.1, 1.2])
    ours, theirs = both_routes(moving, field)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.shape == (10, 12) and (ours == 9.0).any()


# ---------------------------------------------------------------------------------------------- the inverse


def _smooth_ddf(shape, amplitude=1.5, wavelength=24.0) -> torch.Tensor:
    p = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
    k = 2 * math.pi / wavelength
    return torch.stack(
        [
            amplitude * torch.sin(k * p[1]) + 0.5,
            amplitude * torch.cos(k * p[2]) * torch.sin(k * p[0]),
            -amplitude * torch.sin(k * p[0] + 1.0),
        ]
    )  # derivatives up to amplitude * k ~ 0.4: invertible


def _compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The ddf of ``p -> p + first(p)`` followed by ``q -> q + second(q)``: ``first + second(p + first(p))``."""
    return first + warp_with_ddf(second[None], first[None], padding_mode="border")[0]


def test_invert_ddf_composes_to_the_identity():
    u = _smooth_ddf((32, 30, 28))
    v = invert_ddf(u, iterations=20)
    assert v.shape == u.shape and v.dtype == u.dtype
    inner = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))  # away from the clamped border
    # v(p) + u(p + v(p)) = 0 is the fixed point itself: 2e-9 voxels after 20 iterations (3e-3 after 5)
    assert _compose(v, u)[inner].abs().max() < 1e-6
    # the other order, u(p) + v(p + u(p)), holds up to v's trilinear interpolation between voxels, an error of
    # the order of the field's curvature (amplitude * k^2 / 8 ~ 0.013 per component): measured 0.052 voxels, for
    # a deformation of up to 2 voxels whose negation -u misses by 0.78
    assert _compose(u, v)[inner].abs().max() < 0.08
    assert u[inner].abs().max() > 1.5
    assert _compose(-u, u)[inner].abs().max() > 0.5
    with pytest.raises(ValueError, match="iterations"):
        invert_ddf(u, iterations=0)


def test_invert_itk_displacement_undoes_the_forward_field(tmp_path):
    affine = _affine(OBLIQUE, (32, 30, 28))
    forward = ddf_voxels_to_world(_smooth_ddf((32, 30, 28)).float(), affine)
    save_itk_displacement(forward, affine, tmp_path / "forward.nii.gz")
    inverse = invert_itk_displacement(tmp_path / "forward.nii.gz", tmp_path / "inverse.nii.gz")
    assert (tmp_path / "inverse.nii.gz").exists()
    np.testing.assert_allclose(inverse.affine.numpy(), affine, atol=1e-4)
    # a smooth image warped by the forward field, then by the inverse: the image back, away from the border
    x = _points(affine, (32, 30, 28))
    image = _write(np.sin(x / 9.0).sum(0).reshape(32, 30, 28).astype(np.float32), affine, tmp_path / "image.nii.gz")
    there = apply_itk_displacement(image, tmp_path / "forward.nii.gz")
    back = _itk_array(apply_itk_displacement(there, tmp_path / "inverse.nii.gz"))
    original = np.asarray(nib.load(image).dataobj)
    inner = (slice(5, -5),) * 3
    assert np.abs(back - original)[inner].max() < 0.05  # the image spans [-3, 3]
    assert np.abs(_itk_array(there) - original)[inner].max() > 0.3


# --------------------------------------------------------------------------- inference.json against ITK, ANTs


@pytest.fixture(scope="module", params=list(CASES))
def registered(request, tmp_path_factory):
    """
    One pair through inference.json's preprocessing, a known smooth ddf instead of the network (the field
    :py:func:`_world_field` in voxels of the network grid, the moving image warped with it as ``PairInferer``
    does), and inference.json's postprocessing, which writes the warped image and label, the MONAI ddf and the ITK
    field. ``--intensity`` is off so that the warped intensities can be compared with the moving image's.
    """
    fixed_affine, fixed_shape, spacing, moving_grid = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    moving_affine, moving_shape = ROTATED_MOVING if moving_grid == "rotated" else _lattice(fixed_affine, fixed_shape)
    xm = _points(moving_affine, moving_shape)
    paths = {
        "moving_image": _write(
            _moving_intensity(xm).reshape(moving_shape).astype(np.float32), moving_affine, root / "moving.nii.gz"
        ),
        "moving_label": _write(_moving_labels(xm).reshape(moving_shape), moving_affine, root / "moving_seg.nii.gz"),
        "fixed_image": _write(
            np.random.default_rng(0).random(fixed_shape).astype(np.float32), fixed_affine, root / "fixed.nii.gz"
        ),
    }
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_JSON))
    parser["spacing"] = spacing
    parser["intensity"] = None
    parser["output_dir"] = str(root / "out")
    d = parser.get_parsed_content("preprocessing")(dict(paths))
    net = d["fixed_image"].affine.numpy()
    shape = d["fixed_image"].shape[1:]
    ddf = np.linalg.solve(net[:3, :3], _world_field(_points(net, shape))).reshape(3, *shape)
    ddf = torch.as_tensor(ddf, dtype=torch.float32)
    warped = warp_with_ddf(d["moving_image"].as_tensor()[None], ddf[None], padding_mode="border")[0]
    d["pred"] = {"warped_image": warped, "ddf": ddf}
    parser.get_parsed_content("postprocessing")(d)

    # where the comparison is meaningful: the fixed point and its target x + u(x) at least two network voxels
    # inside the fixed grid (there the package's warp samples neither DivisiblePadd's zeros nor Invertd's border
    # clamp, which the ITK field applied to the original moving image does not do either), and the target inside
    # the moving image
    x = _points(fixed_affine, fixed_shape)
    target = x + _world_field(x)
    margin = np.ceil(2 * (spacing or 0) / np.linalg.norm(fixed_affine[:3, :3], axis=0))[:, None]

    def inside(points, affine, shape, border):
        index = np.linalg.solve(affine[:3, :3], points - affine[:3, 3:])
        return np.all((index >= border) & (index <= np.asarray(shape)[:, None] - 1 - border), axis=0)

    mask = inside(x, fixed_affine, fixed_shape, margin) & inside(target, fixed_affine, fixed_shape, margin)
    mask &= inside(target, moving_affine, moving_shape, 1)
    out = root / "out"
    return SimpleNamespace(
        name=request.param,
        root=root,
        paths=paths,
        fixed_affine=fixed_affine,
        fixed_shape=fixed_shape,
        spacing=spacing,
        moving_grid=moving_grid,
        x=x,
        mask=mask.reshape(fixed_shape),
        warped=out / "moving_to_fixed_warped.nii.gz",
        label=out / "moving_to_fixed_warped_label.nii.gz",
        ddf=out / "moving_to_fixed_ddf.nii.gz",
        itk=out / "moving_to_fixed_itk_displacement.nii.gz",
    )


def _field_tolerance(case) -> float:
    """mm. Without --spacing the field is resampled by reorientation and cropping only: float32 rounding. With it,
    Invertd interpolates the field from the network grid, which is exact for its affine part and leaves the
    sinusoids' linear-interpolation error, below amplitude * (k h)^2 / 8 ~ 0.03 mm for 2 mm amplitude, 40 mm
    wavelength and h = 2.2 mm: twice that."""
    return 1e-3 if case.spacing is None else 0.06


def test_inference_writes_the_four_outputs_on_the_fixed_grid(registered):
    assert sorted(p.name for p in registered.itk.parent.iterdir()) == sorted(
        p.name for p in (registered.warped, registered.label, registered.ddf, registered.itk)
    )
    for path in (registered.warped, registered.label, registered.ddf, registered.itk):
        image = nib.load(path)
        np.testing.assert_allclose(image.affine, registered.fixed_affine, atol=1e-4)
        assert image.shape[:3] == registered.fixed_shape
    assert nib.load(registered.ddf).shape == (*registered.fixed_shape, 3)
    assert nib.load(registered.itk).shape == (*registered.fixed_shape, 1, 3)
    assert nib.load(registered.itk).header.get_intent()[0] == "vector"
    assert registered.mask.mean() > 0.3


def test_itk_reads_the_known_field_in_every_component(registered):
    """ITK itself resamples images of the RAS coordinates with the written field: ``x_k + u_k(x)``, so each
    component as ITK applies it, compared with the known field."""
    coordinates = []
    moving = nib.load(registered.paths["moving_image"])
    xm = _points(moving.affine, moving.shape)
    for k in range(3):
        path = _write(xm[k].reshape(moving.shape).astype(np.float32), moving.affine, registered.root / f"x{k}.nii.gz")
        coordinates.append(_itk_array(apply_itk_displacement(path, registered.itk)).reshape(-1))
    u_itk = np.stack(coordinates) - registered.x
    error = np.abs(u_itk - _world_field(registered.x))[:, registered.mask.reshape(-1)]
    assert error.max() < _field_tolerance(registered)


def test_monai_ddf_file_is_in_voxels_of_the_fixed_grid(registered):
    """``<pair>_ddf.nii.gz``: channel i along the fixed file's array axis i, in its voxels; warping an image on
    the fixed grid with it (the package's warp) gives what ITK gives with the ITK field."""
    ddf = np.moveaxis(np.asarray(nib.load(registered.ddf).dataobj, dtype=np.float64), -1, 0)  # (3, X, Y, Z)
    world = registered.fixed_affine[:3, :3] @ ddf.reshape(3, -1)
    error = np.abs(world - _world_field(registered.x))[:, registered.mask.reshape(-1)]
    assert error.max() < _field_tolerance(registered)
    # the moving image sampled on the fixed grid, warped by warp_with_ddf, against ITK on the original moving image
    on_fixed = torch.as_tensor(_moving_intensity(registered.x).reshape(1, 1, *registered.fixed_shape))
    ours = warp_with_ddf(on_fixed, torch.as_tensor(ddf)[None], padding_mode="border")[0, 0].numpy()
    theirs = _itk_array(apply_itk_displacement(registered.paths["moving_image"], registered.itk))
    assert np.abs(ours - theirs)[registered.mask].max() < 1e-3


def test_itk_warps_the_moving_image_like_the_bundle(registered):
    """
    The bundle's warped image (resampled onto the network grid, warped, resampled back) against ITK resampling the
    original moving image once with the ITK field. The moving image is an affine function of position, which every
    trilinear interpolation reproduces exactly, so the two agree up to float32 rounding of values up to ~100: max
    difference < 1e-4 (measured ~1.5e-5). An error in the field's axes, signs or units would show as millimetres
    times the gradient (~1 per mm).
    """
    ours = np.asarray(nib.load(registered.warped).dataobj)
    theirs = _itk_array(apply_itk_displacement(registered.paths["moving_image"], registered.itk))
    assert np.abs(ours - theirs)[registered.mask].max() < 1e-4
    assert np.abs(theirs - _moving_intensity(registered.x).reshape(registered.fixed_shape))[registered.mask].max() > 1


def test_itk_warps_the_moving_label_like_the_bundle(registered):
    """
    Nearest neighbour. The bundle samples the ORIGINAL moving label once at x + u(x), with ITK, through the field
    it saves (``ApplyDisplacementd``), so ITK's application of the written field to the moving label file gives the
    same labels on every case (rotated moving grid, --spacing): identical voxel for voxel on the whole fixed grid
    (same resampler, same field, same rounding; measured: 0 voxels differ in every case).
    """
    ours = np.asarray(nib.load(registered.label).dataobj)
    theirs = _itk_array(apply_itk_displacement(registered.paths["moving_label"], registered.itk, nearest=True))
    assert ours.dtype == theirs.dtype == np.int16
    np.testing.assert_array_equal(ours, theirs)  # the whole fixed grid, borders included
    assert len(np.unique(theirs[registered.mask])) == 4


def test_ants_applies_the_field_like_itk(registered):
    ants = pytest.importorskip("ants")
    fixed = ants.image_read(registered.paths["fixed_image"])
    moving = ants.image_read(registered.paths["moving_image"])
    label = ants.image_read(registered.paths["moving_label"])
    warped = ants.apply_transforms(fixed, moving, transformlist=[str(registered.itk)]).numpy()
    warped_label = ants.apply_transforms(
        fixed, label, transformlist=[str(registered.itk)], interpolator="nearestNeighbor"
    ).numpy()
    ours = np.asarray(nib.load(registered.warped).dataobj)
    assert np.abs(warped - ours)[registered.mask].max() < 1e-4
    theirs = _itk_array(apply_itk_displacement(registered.paths["moving_label"], registered.itk, nearest=True))
    assert np.sum((warped_label != theirs) & registered.mask) <= 0.005 * registered.mask.sum()
    # the bundle's label against ANTs' application of the saved field: identical except at ties (measured: 0
    # voxels differ on the whole grid in every case)
    bundle_label = np.asarray(nib.load(registered.label).dataobj)
    assert np.sum(warped_label != bundle_label) <= 0.005 * bundle_label.size
