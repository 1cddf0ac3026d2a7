# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
Displacement fields between the MONAI convention and world millimetres, and ITK displacement-field files.

Conventions (one field, three spellings):

- **MONAI ddf** (what the network predicts, what :py:func:`~monai_sacb.networks.blocks.warp_with_ddf` and
  :py:class:`~monai_sacb.transforms.Warpd` apply): an array (spatial_dims, *S) on a grid of shape S,
  ``warped(p) = moving(p + ddf(p))``, ``p`` and ``ddf(p)`` in voxels of that grid, channel i along array axis i,
  ``align_corners=True`` (voxel centres).
- **world field** (RAS mm): the same backward map in world coordinates. With ``A`` the grid's voxel -> RAS mm affine
  (a MetaTensor's ``affine``), the fixed-space point ``x = A p`` is mapped to the moving-space point ``x + u(x)``,
  ``u(x) = A[:d, :d] @ ddf(p)``. A world vector does not depend on the grid that samples it, so a world field may
  be resampled like an intensity image (``Invertd``, ``ResampleToMatchd``) and stays valid, which a voxel ddf
  does not when the grids differ in axes, orientation or spacing.
- **ITK displacement field** (what ``itk.DisplacementFieldTransform``, ``antsApplyTransforms`` and 3D Slicer
  read): the world field with LPS components, ``u_LPS = diag(-1, -1, 1) @ u_RAS``, on the fixed image's grid
  (origin, spacing and direction from its affine), stored as a vector image; in NIfTI of shape (X, Y, Z, 1, 3),
  intent ``VECTOR``. ITK maps the fixed point ``x`` (LPS mm) to ``x + u_LPS(x)`` in the moving image: the same
  backward convention, so resampling the moving image with it onto the fixed grid gives the registered image.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor, PathLike
from monai.data import MetaTensor
from monai.data.image_writer import ITKWriter
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, SaveImage
from monai.utils import convert_to_dst_type, optional_import

from monai_sacb.data.utils import atomic_write
from monai_sacb.networks.blocks.warp import warp_with_ddf
from monai_sacb.transforms.utils import matching_output_keys

itk, _ = optional_import("itk")

__all__ = [
    "ddf_voxels_to_world",
    "ddf_world_to_voxels",
    "ras_to_lps_vectors",
    "invert_ddf",
    "save_itk_displacement",
    "load_itk_displacement",
    "apply_itk_displacement",
    "invert_itk_displacement",
    "DDFToWorldd",
    "DDFToVoxelsd",
    "SaveITKDisplacementd",
    "ApplyDisplacementd",
]


def _plain(x: NdarrayOrTensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.as_tensor() if isinstance(t, MetaTensor) else t


def _linear_part(affine: NdarrayOrTensor, spatial_dims: int) -> torch.Tensor:
    """The (spatial_dims, spatial_dims) linear part of a (d+1, d+1) voxel -> world affine, float64."""
    a = _plain(affine).detach().to("cpu", torch.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < spatial_dims + 1:
        raise ValueError(f"affine must be a square (d+1, d+1) matrix with d >= {spatial_dims}, got {tuple(a.shape)}.")
    return a[:spatial_dims, :spatial_dims]


def _apply_matrix(field: NdarrayOrTensor, matrix: torch.Tensor) -> NdarrayOrTensor:
    """``matrix @ field(p)`` at every point of a (spatial_dims, *S) field, computed in float64, returned in the
    field's type and floating dtype."""
    f = _plain(field)
    spatial_dims = f.shape[0] if f.ndim > 1 else -1
    if f.ndim != spatial_dims + 1 or spatial_dims not in (2, 3):
        raise ValueError(
            f"a displacement field must be (spatial_dims, *S) with 2 or 3 spatial dims and no batch dimension, got "
            f"shape {tuple(f.shape)}."
        )
    if matrix.shape != (spatial_dims, spatial_dims):
        raise ValueError(f"matrix {tuple(matrix.shape)} does not match a field of {spatial_dims} components.")
    dtype = f.dtype if f.is_floating_point() else torch.float32
    out = torch.einsum("ij,j...->i...", matrix.to(f.device), f.to(torch.float64)).to(dtype)
    if isinstance(field, MetaTensor):
        return out  # the dictionary transforms attach the metadata they mean
    return convert_to_dst_type(out, field, dtype=dtype)[0]


def ddf_voxels_to_world(ddf: NdarrayOrTensor, affine: NdarrayOrTensor) -> NdarrayOrTensor:
    """
    MONAI ddf in voxels of a grid -> the same displacements as world vectors: ``u = affine[:d, :d] @ ddf(p)``.

    Args:
        ddf: (spatial_dims, *S) displacement in voxels of the grid, channel i along array axis i (2D or 3D, no batch).
        affine: (d+1, d+1) voxel -> world affine of that grid (a MetaTensor's ``affine``: RAS millimetres), d >=
            spatial_dims; only its linear part is used (displacements are vectors, not points).

    Returns:
        (spatial_dims, *S) world vectors (RAS mm for a MONAI affine) at the same grid points, in ``ddf``'s type
        (a plain tensor for a MetaTensor input) and floating dtype; computed in float64.
    """
    f = _plain(ddf)
    return _apply_matrix(ddf, _linear_part(affine, f.shape[0]))


def ddf_world_to_voxels(field: NdarrayOrTensor, affine: NdarrayOrTensor) -> NdarrayOrTensor:
    """
    World displacement vectors -> MONAI ddf in voxels of the grid with ``affine``:
    ``ddf(p) = inv(affine[:d, :d]) @ u``, the inverse of :py:func:`ddf_voxels_to_world`.

    Args:
        field: (spatial_dims, *S) world vectors (RAS mm for a MONAI affine) at the points of the grid.
        affine: (d+1, d+1) voxel -> world affine of the grid the ddf is wanted in (invertible linear part).

    Returns:
        (spatial_dims, *S) ddf in voxels of that grid, channel i along its array axis i, same type and dtype rules
        as :py:func:`ddf_voxels_to_world`.
    """
    f = _plain(field)
    return _apply_matrix(field, torch.linalg.inv(_linear_part(affine, f.shape[0])))


def ras_to_lps_vectors(field: NdarrayOrTensor) -> NdarrayOrTensor:
    """
    World vectors RAS <-> LPS (its own inverse): components 0 and 1 change sign, ``diag(-1, -1, 1) @ u``
    (``diag(-1, -1)`` in 2D). Points need the same flip of their coordinates; vectors need nothing else.

    Args:
        field: (spatial_dims, *S) world vectors, 2D or 3D.

    Returns:
        the flipped vectors, same type and dtype rules as :py:func:`ddf_voxels_to_world`.
    """
    f = _plain(field)
    spatial_dims = f.shape[0]
    flip = torch.diag(torch.tensor([-1.0, -1.0, 1.0][:spatial_dims], dtype=torch.float64))
    return _apply_matrix(field, flip)


def invert_ddf(ddf: NdarrayOrTensor, iterations: int = 20) -> NdarrayOrTensor:
    """
    Approximate inverse of a MONAI ddf by fixed-point iteration on ``v(p) = -u(p + v(p))``, starting from
    ``v = -u``: ``v_{k+1}(p) = -u(p + v_k(p))`` (``u`` sampled by :py:func:`warp_with_ddf`, trilinear,
    ``align_corners=True``, border padding). Then ``p + v(p)`` followed by ``q + u(q)`` is close to the identity:
    ``v(p) + u(p + v(p)) ~ 0``.

    This is an approximation, documented as such: the iteration converges (geometrically) where the map
    ``v -> -u(p + v)`` is a contraction, i.e. where the field's spatial derivatives are below 1 in norm (the
    displacement changes by less than one voxel per voxel: smooth, unfolded fields such as the bundle's); at
    folds (Jacobian determinant <= 0) no inverse exists and the result is only a best effort. The inverse is
    sampled on the same grid as ``u`` and, near the border, samples ``u`` clamped to the grid, so it is least
    accurate where ``p + v(p)`` leaves the grid. The relation is affine-invariant, so the voxels may be those of
    any grid (an ITK field: see :py:func:`invert_itk_displacement`).

    Args:
        ddf: (spatial_dims, *S) ddf in voxels, 2D or 3D, no batch dimension.
        iterations: fixed-point iterations (each one warp); 20 reach float32 precision for fields whose
            derivatives stay below about 0.3.

    Returns:
        (spatial_dims, *S) inverse ddf in voxels of the same grid, in ``ddf``'s type and floating dtype.
    """
    u = _plain(ddf)
    if u.ndim != u.shape[0] + 1 or u.shape[0] not in (2, 3):
        raise ValueError(f"ddf must be (spatial_dims, *S) with 2 or 3 spatial dims, got shape {tuple(u.shape)}.")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}.")
    dtype = u.dtype if u.is_floating_point() else torch.float32
    u = u.to(dtype)[None]
    v = -u
    for _ in range(iterations):
        v = -warp_with_ddf(u, v, padding_mode="border")
    out = v[0]
    if isinstance(ddf, MetaTensor):
        return out
    return convert_to_dst_type(out, ddf, dtype=dtype)[0]


def _field_itk_image(field_lps: torch.Tensor, affine_ras: NdarrayOrTensor) -> Any:
    """(3, *S) LPS vectors on a grid with a RAS affine -> an ``itk.Image[itk.Vector[F, d], d]``."""
    spatial_dims = field_lps.shape[0]
    return ITKWriter.create_backend_obj(
        np.moveaxis(field_lps.detach().cpu().numpy(), 0, -1),  # channel last, as create_backend_obj expects
        channel_dim=-1,
        affine=_plain(affine_ras).detach().cpu().numpy()[: spatial_dims + 1, : spatial_dims + 1],
        dtype=np.float32,
        affine_lps_to_ras=True,  # the affine is RAS: its geometry is converted to ITK's LPS
    )


def save_itk_displacement(field: NdarrayOrTensor, affine: NdarrayOrTensor | None, path: PathLike) -> None:
    """
    Write a world displacement field as an ITK displacement-field file (see the module docstring): components
    converted RAS -> LPS, float32, geometry (origin, spacing, direction) from ``affine`` in ITK's LPS convention,
    as a vector image, written atomically (``path`` is never left partial). A ``.nii.gz`` / ``.nii`` path gives a
    NIfTI of shape (X, Y, Z, 1, 3) with intent ``VECTOR``; ``.nrrd``, ``.mha`` and ``.mhd`` work too.

    Args:
        field: (spatial_dims, *S) world displacement in RAS mm at the points of the grid (e.g. the output of
            :py:class:`DDFToWorldd` after ``Invertd``), channel i the RAS axis i.
        affine: (d+1, d+1) voxel -> RAS mm affine of that grid; None takes ``field.affine`` (a MetaTensor).
        path: the file to write; its folder is created.
    """
    if affine is None:
        if not isinstance(field, MetaTensor):
            raise ValueError("affine is needed when field is not a MetaTensor.")
        affine = field.affine
    image = _field_itk_image(_plain(ras_to_lps_vectors(field)), affine)
    atomic_write(_as_path(path), lambda tmp: itk.imwrite(image, tmp))


def _as_path(path: PathLike) -> Path:
    return Path(os.path.expanduser(os.fspath(path)))


def _read_image(image: Any, pixel_type: Any = None) -> Any:
    if isinstance(image, (str, os.PathLike)):
        path = _as_path(image)
        if not path.exists():
            raise FileNotFoundError(f"file not found: '{path}' (absolute path '{path.absolute()}').")
        return itk.imread(str(path), pixel_type) if pixel_type is not None else itk.imread(str(path))
    return image


def _read_displacement_field(field: Any) -> Any:
    """A path or an ITK vector image -> the ITK image, checked to hold one vector component per dimension."""
    image = _read_image(field)
    dim = image.GetImageDimension()
    if image.GetNumberOfComponentsPerPixel() != dim or dim not in (2, 3):
        raise ValueError(
            f"{field!r} is not an ITK displacement field: ITK reads a {dim}D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel, where a field is a 2D or 3D vector image "
            "with one component per dimension (e.g. the bundle's _itk_displacement.nii.gz or an ANTs Warp.nii.gz; "
            "the MONAI _ddf.nii.gz, in voxels, is not one)."
        )
    return image


def _itk_displacement_field(field: Any) -> Any:
    """A path or an ITK vector image -> ``itk.VectorImage[itk.D, d]``, a field ``DisplacementFieldTransform[D, d]``
    takes in the ITK Python wheels (which do not wrap images of ``itk.Vector[itk.D, d]``)."""
    image = _read_displacement_field(field)
    array = np.ascontiguousarray(itk.array_view_from_image(image), dtype=np.float64)
    out = itk.image_from_array(array, is_vector=True)  # itk.VectorImage[itk.D, dim], which the transform takes
    out.CopyInformation(image)
    return out


def load_itk_displacement(field: Any) -> MetaTensor:
    """
    Read an ITK displacement field (a file such as :py:func:`save_itk_displacement` writes, an ANTs ``Warp``
    field, or an ``itk.Image`` of vectors) as a world field in MONAI's convention.

    Args:
        field: a file path or an ITK vector image whose pixels are LPS mm displacements.

    Returns:
        (spatial_dims, *S) MetaTensor of float32 displacements in RAS mm, channel i the RAS axis i, array axis i the
        ITK index axis i, with the grid's voxel -> RAS mm ``affine``; :py:func:`ddf_world_to_voxels` with that
        affine gives the MONAI ddf on the field's grid.
    """
    image = _itk_displacement_field(field)
    dim = image.GetImageDimension()
    lps = np.moveaxis(itk.array_from_image(image), -1, 0)  # (d, *reversed S): ITK arrays are z, y, x
    lps = np.transpose(lps, (0, *range(dim, 0, -1)))  # (d, *S), array axis i = ITK index axis i
    direction = itk.array_from_matrix(image.GetDirection())
    affine = np.eye(dim + 1)
    affine[:dim, :dim] = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:dim, dim] = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.diag([-1.0, -1.0] + [1.0] * (dim - 1)) @ affine  # LPS -> RAS points
    ras = ras_to_lps_vectors(torch.as_tensor(np.ascontiguousarray(lps), dtype=torch.float32))
    return MetaTensor(ras, affine=torch.as_tensor(affine, dtype=torch.float64))


def _same_grid(a: Any, b: Any) -> bool:
    """Whether two ITK images share size, origin, spacing and direction exactly."""
    return (
        tuple(a.GetLargestPossibleRegion().GetSize()) == tuple(b.GetLargestPossibleRegion().GetSize())
        and tuple(a.GetOrigin()) == tuple(b.GetOrigin())
        and tuple(a.GetSpacing()) == tuple(b.GetSpacing())
        and np.array_equal(itk.array_from_matrix(a.GetDirection()), itk.array_from_matrix(b.GetDirection()))
    )


def _float32_vector_field(field: Any) -> Any:
    """An ITK vector image (checked by :py:func:`_read_displacement_field`) -> the same field as
    ``itk.Image[itk.Vector[itk.F, d], d]`` (the type ``itk.WarpImageFilter`` takes), or None when a value is not
    exactly a float32 (it would not be the same field)."""
    dim = field.GetImageDimension()
    vector_image = itk.Image[itk.Vector[itk.F, dim], dim]
    if isinstance(field, vector_image):
        return field
    array = itk.array_view_from_image(field)
    single = array.astype(np.float32, copy=False)
    if single is not array and not np.array_equal(single, array):
        return None
    out = itk.image_from_array(np.ascontiguousarray(single), ttype=vector_image)
    out.CopyInformation(field)
    return out


def _resample_with_transform(work: Any, disp: Any, ref: Any, interpolator: Any, default_value: float) -> Any:
    """``itk.ResampleImageFilter`` of ``work`` through ``DisplacementFieldTransform(disp)`` onto ``ref``'s grid."""
    dim = work.GetImageDimension()
    transform = itk.DisplacementFieldTransform[itk.D, dim].New()
    transform.SetDisplacementField(disp)
    image_type = type(work)
    resampler = itk.ResampleImageFilter[image_type, image_type].New()
    resampler.SetInput(work)
    resampler.SetTransform(transform)
    resampler.SetInterpolator(interpolator)
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetOutputOrigin(ref.GetOrigin())
    resampler.SetOutputSpacing(ref.GetSpacing())
    resampler.SetOutputDirection(ref.GetDirection())
    resampler.SetSize(ref.GetLargestPossibleRegion().GetSize())
    resampler.Update()
    return resampler.GetOutput()


def apply_itk_displacement(
    image: Any,
    field: Any,
    reference: Any = None,
    nearest: bool = False,
    default_value: float = 0.0,
    output_path: PathLike | None = None,
) -> Any:
    """
    Resample an image with an ITK displacement field, with ITK itself (``itk.DisplacementFieldTransform`` +
    ``itk.ResampleImageFilter``), as ``antsApplyTransforms -t field`` does: the output at the reference grid's
    point ``x`` (LPS mm) is ``image(x + u(x))``. On the field's own grid (``reference`` None or of the same
    geometry) and for a field that float32 holds exactly (the bundle's), ``itk.WarpImageFilter`` computes the same
    voxels and loads much faster. With the ``<pair>_itk_displacement.nii.gz`` of the inference
    bundle, ``apply_itk_displacement(moving, field)`` gives the moving image registered onto the fixed grid.

    Args:
        image: the image to warp: a file path (any format ITK reads) or a scalar ``itk.Image``, 2D or 3D.
        field: the displacement field: a file path or an ``itk.Image`` of vectors (LPS mm).
        reference: the output grid: a file path or an ``itk.Image``; None takes the field's grid (the fixed
            image's grid for the bundle's fields).
        nearest: nearest-neighbour interpolation (label maps: the output has ``image``'s values and, where ITK
            wraps it, its pixel type, else float64); otherwise linear, with a float32 output.
        default_value: value where ``x + u(x)`` falls outside ``image``.
        output_path: if given, the result is also written there (atomically).

    Returns:
        the resampled ``itk.Image`` on the reference grid.
    """
    moving = _read_image(image)
    if moving.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"image must be scalar, got {moving.GetNumberOfComponentsPerPixel()} components per pixel.")
    dim = moving.GetImageDimension()
    disp = _read_displacement_field(field)
    if disp.GetImageDimension() != dim:
        raise ValueError(f"image is {dim}D but the field is {disp.GetImageDimension()}D.")
    ref = _read_image(reference) if reference is not None else disp
    values = itk.array_view_from_image(moving)
    # resampled in float64 (nearest: every integer label up to 2**53 exactly) or float32 (linear), whatever the
    # pixel type, since the ITK wheels wrap the resampler for a few pixel types only
    work = itk.image_from_array(np.ascontiguousarray(values, dtype=np.float64 if nearest else np.float32))
    work.CopyInformation(moving)
    image_type = type(work)
    interpolator = (
        itk.NearestNeighborInterpolateImageFunction[image_type, itk.D].New()
        if nearest
        else itk.LinearInterpolateImageFunction[image_type, itk.D].New()
    )
    vectors = _float32_vector_field(disp) if ref is disp or _same_grid(ref, disp) else None
    if vectors is not None:
        # on the field's own grid, itk.WarpImageFilter computes what DisplacementFieldTransform + ResampleImageFilter
        # do (the same points, interpolator and inside test; tests/transforms/test_displacement.py compares them),
        # and its ITK modules load in 3 s instead of 8: the transform's pull in thresholding, FFT, smoothing, ...
        warper = itk.WarpImageFilter[image_type, image_type, type(vectors)].New()
        warper.SetInput(work)
        warper.SetDisplacementField(vectors)
        warper.SetInterpolator(interpolator)
        warper.SetEdgePaddingValue(float(default_value))
        warper.SetOutputParametersFromImage(vectors)
        warper.Update()
        out = warper.GetOutput()
    else:
        out = _resample_with_transform(work, _itk_displacement_field(disp), ref, interpolator, default_value)
    if nearest and values.dtype != np.float64:
        try:  # back to the image's own pixel type where ITK wraps it
            typed = itk.image_from_array(itk.array_view_from_image(out).astype(values.dtype))
            typed.CopyInformation(out)
            out = typed
        except Exception:  # an unwrapped pixel type (e.g. int64): the float64 image holds the same values
            pass
    if output_path is not None:
        atomic_write(_as_path(output_path), lambda tmp: itk.imwrite(out, tmp))
    return out


def invert_itk_displacement(field: Any, output_path: PathLike | None = None, iterations: int = 20) -> MetaTensor:
    """
    Approximate inverse of an ITK displacement field (moving -> fixed), by :py:func:`invert_ddf` in voxels of the
    field's grid; the same approximation and convergence conditions. The inverse is sampled on the same grid
    (so it covers the moving points inside the fixed image's extent) and applied like the forward field,
    e.g. ``apply_itk_displacement(fixed, inverse, reference=moving)`` brings the fixed image onto the moving grid.

    Args:
        field: a file path or an ITK vector image (LPS mm).
        output_path: if given, the inverse is written there as an ITK displacement field.
        iterations: fixed-point iterations.

    Returns:
        the inverse as a world field, (spatial_dims, *S) RAS mm MetaTensor with the grid's affine (as
        :py:func:`load_itk_displacement` returns).
    """
    world = load_itk_displacement(field)
    affine = world.affine
    inverse = ddf_voxels_to_world(invert_ddf(ddf_world_to_voxels(world, affine), iterations), affine)
    out = MetaTensor(inverse, affine=affine)
    if output_path is not None:
        save_itk_displacement(out, affine, output_path)
    return out


def _with_meta(array: torch.Tensor, source: Any, ref: MetaTensor | None) -> Any:
    """``array`` as a MetaTensor with ``ref``'s (else ``source``'s) metadata and applied operations."""
    meta_from = ref if ref is not None else (source if isinstance(source, MetaTensor) else None)
    if meta_from is None or not get_track_meta():
        return array
    meta = copy.deepcopy(meta_from.meta)  # includes the affine
    if isinstance(source, MetaTensor) and "filename_or_obj" in source.meta:
        meta["filename_or_obj"] = source.meta["filename_or_obj"]
    out = MetaTensor(array, meta=meta)
    out.applied_operations = copy.deepcopy(meta_from.applied_operations)
    return out


class _DDFAffined(MapTransform):
    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str | None = None,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.output_keys = matching_output_keys(self.keys, output_keys)

    @staticmethod
    def _convert(field: torch.Tensor, affine: Any) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            field = d[key]
            ref = d.get(self.ref_key) if self.ref_key is not None else None
            if self.ref_key is not None and not isinstance(ref, MetaTensor):
                raise KeyError(f"ref_key {self.ref_key!r} must name a MetaTensor (the grid's affine); got {type(ref)}.")
            grid = ref if ref is not None else field
            if not isinstance(grid, MetaTensor):
                raise TypeError(f"{key} is not a MetaTensor: give ref_key, the key of a MetaTensor on the same grid.")
            if tuple(grid.shape[1:]) != tuple(field.shape[1:]):
                raise ValueError(
                    f"{key} has spatial shape {tuple(field.shape[1:])} but its grid {self.ref_key or key} has "
                    f"{tuple(grid.shape[1:])}: the field must be sampled on the grid whose affine converts it."
                )
            d[out_key] = _with_meta(self._convert(_plain(field), grid.affine), field, ref)
        return d


class DDFToWorldd(_DDFAffined):
    """
    MONAI ddf in voxels -> world displacement in RAS mm (:py:func:`ddf_voxels_to_world`), on the same grid.

    In ``bundle/configs/inference.json`` it turns the network's ddf (voxels of the network grid: after
    ``Orientationd``, ``Spacingd``, ``DivisiblePadd``) into RAS mm vectors with ``ref_key="fixed_image"`` (the
    preprocessed fixed image, whose affine is the network grid's). The output carries ``ref_key``'s metadata and
    applied operations, so that ``Invertd(..., orig_keys="fixed_image")`` resamples it back onto the fixed image's
    original grid; the vectors stay valid there because world vectors do not depend on the grid that samples them
    (a voxel ddf would keep the network grid's axes and units).

    Shapes: field (spatial_dims, *S), 2D or 3D, no batch dimension; the grid (``ref_key``'s, or the field's own
    when ``ref_key`` is None) must have the same spatial shape S.

    Args:
        keys: keys of the ddfs, e.g. ``"ddf"``.
        ref_key: key of the MetaTensor whose grid the ddf is in; None uses each field's own affine (it must then be
            a MetaTensor).
        output_keys: where to write the results, one per key; None overwrites ``keys``.
        allow_missing_keys: don't raise if a key is missing.
    """

    @staticmethod
    def _convert(field: torch.Tensor, affine: Any) -> torch.Tensor:
        return ddf_voxels_to_world(field, affine)


class DDFToVoxelsd(_DDFAffined):
    """
    World displacement in RAS mm -> MONAI ddf in voxels of a grid (:py:func:`ddf_world_to_voxels`).

    In ``bundle/configs/inference.json``, after ``Invertd``, it gives the MONAI ddf on the fixed image's own grid:
    channel i along the fixed file's array axis i, in its voxels, so that ``warp_with_ddf`` / ``Warpd`` of an
    image on the fixed grid (e.g. the moving image resampled onto it) reproduces the registration.

    Shapes and arguments as :py:class:`DDFToWorldd` (``ref_key=None``: each field's own affine, the usual case).
    """

    @staticmethod
    def _convert(field: torch.Tensor, affine: Any) -> torch.Tensor:
        return ddf_world_to_voxels(field, affine)


class SaveITKDisplacementd(MapTransform):
    """
    Save world displacement fields (RAS mm MetaTensors, e.g. :py:class:`DDFToWorldd`'s output after
    ``Invertd``) as ITK displacement-field files (see the module docstring and :py:func:`save_itk_displacement`):
    LPS mm components, float32, on the MetaTensor's grid, written by MONAI's ``SaveImage`` with its ``ITKWriter``
    (a channel-first vector array becomes an ITK vector image: NIfTI (X, Y, Z, 1, 3), intent ``VECTOR``). The
    data are left unchanged (RAS).

    ``antsApplyTransforms -i moving.nii.gz -r fixed.nii.gz -t <file> -o out.nii.gz``,
    :py:func:`apply_itk_displacement`, ``itk.DisplacementFieldTransform`` and 3D Slicer (loaded as a Transform)
    apply it to the moving image.

    Args:
        keys: keys of the world fields, (spatial_dims, *S) MetaTensors with a RAS affine.
        output_dir, output_postfix, output_ext, separate_folder, output_name_formatter, print_log: as in
            ``monai.transforms.SaveImaged`` (files ``<output_dir>/<name>_<output_postfix><output_ext>``).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: PathLike = "./",
        output_postfix: str = "itk_displacement",
        output_ext: str = ".nii.gz",
        separate_folder: bool = True,
        output_name_formatter: Any = None,
        print_log: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.saver = SaveImage(
            output_dir=output_dir,
            output_postfix=output_postfix,
            output_ext=output_ext,
            output_dtype=np.float32,
            resample=False,
            squeeze_end_dims=False,
            separate_folder=separate_folder,
            print_log=print_log,
            writer=ITKWriter,
            channel_dim=0,
            output_name_formatter=output_name_formatter,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            field = d[key]
            if not isinstance(field, MetaTensor) or field.ndim != field.shape[0] + 1 or field.shape[0] not in (2, 3):
                raise ValueError(
                    f"{key} must be a (spatial_dims, *S) MetaTensor of RAS mm displacements with its grid's affine, "
                    f"got {type(field).__name__} of shape {tuple(field.shape)}."
                )
            lps = MetaTensor(ras_to_lps_vectors(field.as_tensor()), meta=copy.deepcopy(field.meta))
            self.saver(lps)
        return d


class ApplyDisplacementd(MapTransform):
    """
    Resample images (e.g. the ORIGINAL moving label, as loaded) through a world displacement field with ITK, by
    :py:func:`apply_itk_displacement`: the output at the field's grid point ``x`` is ``image(x + u(x))``, sampled
    once from the image on its own grid (its own affine), and lies on the field's grid (after ``Invertd``, the fixed
    image's original grid).

    In ``bundle/configs/inference.json`` it gives the saved warped label: the label is never resampled onto the
    network grid and back (three nearest-neighbour resamplings, each of which moves boundaries by up to a voxel),
    so it is what ``monai-sacb apply FIELD moving_label --nearest --reference fixed``, ``antsApplyTransforms`` and
    ``itk.ResampleImageFilter`` give with the saved ``_itk_displacement`` file. ITK rather than MONAI's
    ``Resample`` does the sampling on purpose: the field is handed to ITK exactly as
    :py:class:`SaveITKDisplacementd` writes it (LPS float32 vectors, the same geometry), and ITK's nearest-neighbour
    rounding and inside-the-image test are the comparison tools' own, so the labels agree voxel for voxel instead
    of "except at ties" (``grid_sample`` rounds halves and bounds the image differently).

    Shapes: image (1, *S_image) MetaTensor with its voxel -> RAS affine; field (spatial_dims, *S) MetaTensor of RAS
    mm displacements with its grid's affine (:py:class:`DDFToWorldd`'s output, after ``Invertd``), 2D or 3D.

    Args:
        keys: keys of the images to resample, e.g. ``"original_moving_label"`` (a copy made right after loading;
            not ``"moving_label_..."``: ``Spacingd`` takes keys that start with ``"<key>_"`` for metadata dicts).
        field_key: key of the world field, e.g. ``"ddf"``.
        output_keys: where to write the results, one per key; None overwrites ``keys``.
        mode: ``"nearest"`` (label maps: the values are kept exactly) or ``"bilinear"`` (linear).
        default_value: the value where ``x + u(x)`` falls outside the image (ITK's default pixel value).
        allow_missing_keys: don't raise if a key is missing (e.g. a pair without a label map).

    Returns, under ``output_keys``: (1, *S) MetaTensors in the image's dtype (float32 for linear sampling of an
    integer image), with the field's metadata (affine,
    the fixed image's after ``Invertd``), so that ``PairNamed`` and ``SaveImaged`` name and place them like the
    field.
    """

    def __init__(
        self,
        keys: KeysCollection,
        field_key: str = "ddf",
        output_keys: KeysCollection | None = None,
        mode: str = "nearest",
        default_value: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.field_key = field_key
        self.output_keys = matching_output_keys(self.keys, output_keys)
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}.")
        self.mode = mode
        self.default_value = default_value

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            image, field = d[key], d.get(self.field_key)
            if not isinstance(field, MetaTensor) or field.ndim != field.shape[0] + 1 or field.shape[0] not in (2, 3):
                raise ValueError(
                    f"{self.field_key} must be a (spatial_dims, *S) MetaTensor of RAS mm displacements with its grid's "
                    f"affine, got {type(field).__name__} of shape {tuple(getattr(field, 'shape', ()))}."
                )
            spatial_dims = field.shape[0]
            if not isinstance(image, MetaTensor) or image.ndim != spatial_dims + 1 or image.shape[0] != 1:
                raise ValueError(
                    f"{key} must be a (1, *S) MetaTensor with its affine (one channel, {spatial_dims}D), got "
                    f"{type(image).__name__} of shape {tuple(getattr(image, 'shape', ()))}."
                )
            values = _plain(image).detach().cpu()
            moving = ITKWriter.create_backend_obj(
                values[0].numpy(),
                channel_dim=None,
                affine=_plain(image.affine).detach().cpu().numpy()[: spatial_dims + 1, : spatial_dims + 1],
                dtype=np.float64,  # exact for integer labels; apply_itk_displacement resamples in float64 anyway
                affine_lps_to_ras=True,
            )
            # the field as SaveITKDisplacementd writes it: LPS float32 vectors on the field's grid
            disp = _field_itk_image(_plain(ras_to_lps_vectors(field.float())), field.affine)
            out = apply_itk_displacement(
                moving, disp, nearest=self.mode == "nearest", default_value=self.default_value
            )
            array = np.transpose(itk.array_from_image(out), tuple(range(spatial_dims - 1, -1, -1)))  # ITK: z, y, x
            dtype = values.dtype if self.mode == "nearest" or values.is_floating_point() else torch.float32
            result = torch.as_tensor(np.ascontiguousarray(array)).to(dtype)[None]
            d[out_key] = _with_meta(result, field, field)
        return d
