# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
What Ignite needs to train and evaluate a registration network on pairs.

A batch of pairs is a dictionary ``{"moving_image", "fixed_image", "moving_label"?, "fixed_label"?}`` of
(B, C, *spatial) tensors. The network is a single-input module ``pair (B, 2C, *S) -> ddf (B, dims, *S)``,
like :py:class:`monai_sacb.networks.SACBNetDDF`, so that training, inference, ``verify_net_in_out`` and export
share one ``network_def`` and one checkpoint format (the state-dict keys of ``SACBNet`` and ``SACBNetDDF``
are the same).

- :py:class:`PreparePairBatch` (``prepare_batch`` of ``SupervisedTrainer``): ``(cat[moving, fixed], fixed)``;
- :py:class:`PairInferer` (``inferer``): ``network(pair) -> ddf``, then ``warped = Warp(moving, ddf)``, returns
  ``(warped, ddf)``, which is what :py:class:`monai_sacb.losses.RegistrationLoss` takes;
- :py:class:`RegistrationIteration` (``iteration_update`` of ``SupervisedEvaluator``): also warps the moving
  label (nearest neighbour) and puts every tensor a metric or a writer needs into ``engine.state.output``.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import torch

from monai.data import MetaTensor
from monai.engines.utils import IterationEvents, PrepareBatch
from monai.inferers import Inferer
from monai.networks.blocks import Warp
from monai.transforms import MapTransform

from monai_sacb.networks.blocks import warp_with_ddf

__all__ = ["PreparePairBatch", "PairInferer", "RegistrationIteration", "PairNamed", "pair_name_formatter"]


def _make_warp(mode: str, padding_mode: str) -> Warp:
    with warnings.catch_warnings():
        # MONAI announces its PyTorch grid_sample fallback on every construction: it is the path wanted here
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
        return Warp(mode=mode, padding_mode=padding_mode)


def _to(value: Any, device: torch.device | str | None, non_blocking: bool, **kwargs: Any) -> Any:
    return value.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(value, torch.Tensor) else value


def _pair_tensors(
    batchdata: Mapping[Hashable, Any], moving_key: str, fixed_key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    missing = [k for k in (moving_key, fixed_key) if k not in batchdata]
    if missing:
        raise KeyError(
            f"batch has no {missing}; a registration batch needs '{moving_key}' and '{fixed_key}' "
            f"(keys found: {sorted(map(str, batchdata))}). Check the datalist format and the pair transforms."
        )
    return batchdata[moving_key], batchdata[fixed_key]


class PreparePairBatch(PrepareBatch):
    """
    ``prepare_batch`` for :py:class:`monai.engines.SupervisedTrainer` on registration pairs: returns
    ``(inputs, targets) = (cat([moving, fixed], dim=1), fixed)`` on ``device``, so that the trainer calls
    ``inferer(pair, network)`` and ``loss_function(pred, fixed)``.

    Args:
        moving_key: key of the moving image in the batch.
        fixed_key: key of the fixed image in the batch.
    """

    def __init__(self, moving_key: str = "moving_image", fixed_key: str = "fixed_image") -> None:
        self.moving_key = moving_key
        self.fixed_key = fixed_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        moving, fixed = _pair_tensors(batchdata, self.moving_key, self.fixed_key)
        moving = _to(moving, device, non_blocking, **kwargs)
        fixed = _to(fixed, device, non_blocking, **kwargs)
        return torch.cat([moving, fixed], dim=1), fixed


class PairInferer(Inferer):
    """
    Run a single-input registration network on a pair and warp the moving image:
    ``ddf = network(pair)``, optionally ``ddf = refine(moving, fixed, ddf)`` (instance optimisation), then
    ``warped = Warp(mode, padding_mode)(pair[:, :C], ddf)`` with ``C = pair.shape[1] // 2``.

    With ``symmetric=True`` the network also registers the pair the other way round (one batch of 2B) and the two
    fields are averaged as inverses of each other: ``ddf = (u_mf - u_fm(p + u_mf(p))) / 2``, where ``u_mf`` maps
    the fixed grid into the moving image and ``u_fm`` the reverse. A bias the network has whatever the order of
    its inputs cancels (an image registered to itself barely moves), and errors of the two passes average out;
    it costs a second forward pass. Measured on held-out pairs with a network trained on synthesised pairs
    (docs/accuracy.md): higher Dice, about half the SD of the log Jacobian.

    With ``padding_mode="border"`` (the default of ``SACBNet(warp_padding_mode=...)``) and no ``refine``,
    ``warped`` is exactly the ``warped`` output of :py:class:`monai_sacb.networks.SACBNet`. The network may be
    wrapped in ``DistributedDataParallel``: it is called, never unwrapped.

    Args:
        mode: interpolation of the warp.
        padding_mode: padding of the warp.
        refine: optional callable ``refine(moving, fixed, ddf) -> ddf``, e.g.
            :py:class:`monai_sacb.inferers.InstanceOptimization`, applied to the network's field.

    Returns:
        ``(warped, ddf)``: (B, C, *S) and (B, spatial_dims, *S).
    """

    def __init__(
        self, mode: str = "bilinear", padding_mode: str = "border", refine: Any = None, symmetric: bool = False
    ) -> None:
        super().__init__()
        self.warp = _make_warp(mode, padding_mode)
        self.symmetric = bool(symmetric)
        if refine is not None and not callable(refine):
            raise ValueError(f"refine must be callable as refine(moving, fixed, ddf), got {type(refine).__name__}.")
        self.refine = refine

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.shape[1] % 2:
            raise ValueError(
                f"PairInferer expects cat([moving, fixed], dim=1) with an even number of channels, got "
                f"{tuple(inputs.shape)}."
            )
        channels = inputs.shape[1] // 2
        if self.symmetric:
            swapped = torch.cat([inputs[:, channels:], inputs[:, :channels]], dim=1)
            both = network(torch.cat([inputs, swapped], dim=0), *args, **kwargs)
            forward_ddf, backward_ddf = both[: inputs.shape[0]], both[inputs.shape[0] :]
            ddf = 0.5 * (forward_ddf - warp_with_ddf(backward_ddf, forward_ddf, padding_mode="border"))
        else:
            ddf = network(inputs, *args, **kwargs)
        moving = inputs[:, :channels]
        if self.refine is not None:
            ddf = self.refine(moving, inputs[:, channels:], ddf).to(ddf.dtype)
        warped = self.warp(moving.to(ddf.dtype), ddf)
        return warped, ddf


def _like(value: torch.Tensor, ref: Any, filenames: Any = None) -> torch.Tensor:
    """``value`` as a batched MetaTensor with ``ref``'s metadata (affine, ...), when ``ref`` is a MetaTensor."""
    if not isinstance(ref, MetaTensor):
        return value
    plain = value.as_tensor() if isinstance(value, MetaTensor) else value
    meta = copy.copy(ref.meta)
    if filenames is not None:
        meta["filename_or_obj"] = filenames
    out = MetaTensor(plain, meta=meta, applied_operations=copy.deepcopy(ref.applied_operations))
    out.is_batch = ref.is_batch
    return out


def _pair_names(moving: Any, fixed: Any, batch_size: int) -> list[str] | None:
    """``"<moving stem>_to_<fixed stem>"`` for every item of a batch, from the MetaTensors' file names."""
    names = []
    for image in (moving, fixed):
        files = image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None
        if files is None:
            return None
        files = [files] if isinstance(files, str) else list(files)
        if len(files) != batch_size:
            return None
        names.append([_stem(str(f)) for f in files])
    return [f"{m}_to_{f}" for m, f in zip(*names)]


class RegistrationIteration:
    """
    ``iteration_update`` of :py:class:`monai.engines.SupervisedEvaluator` for registration: runs the network
    on the pair in eval mode, warps the moving image (bilinear) and, when the batch has one, the moving label map
    (nearest neighbour), and stores in ``engine.state.output``:

    ``moving_image``, ``fixed_image``, ``warped_image``, ``ddf``, and ``moving_label``, ``fixed_label``,
    ``warped_label`` when the batch has labels.

    Metric handlers read them with ``from_engine``, e.g. ``from_engine(["warped_label", "fixed_label"])`` for
    :py:class:`monai_sacb.handlers.LabelDice` and ``from_engine(["ddf"])`` for
    :py:class:`monai_sacb.handlers.PercentFolding`. When the inputs are MetaTensors, ``warped_image``,
    ``warped_label`` and ``ddf`` carry the fixed image's metadata (affine, spatial shape, ...), so
    ``SaveImaged`` writes them in the fixed image's geometry, and their ``filename_or_obj`` is the pair's name
    ``"<moving>_to_<fixed>"`` (file stems), so that several pairs with one fixed image do not overwrite each other.

    The engine's ``prepare_batch`` is not used: the iteration reads the keys itself. ``engine.inferer`` is used
    when it is a :py:class:`PairInferer`; ``engine.amp`` runs the network under ``torch.autocast`` on CUDA.

    Args:
        moving_key, fixed_key: image keys of the batch.
        moving_label_key, fixed_label_key: label keys (optional in the batch).
        padding_mode: padding of the image warp (the label warp always uses ``"border"`` with nearest sampling).
    """

    def __init__(
        self,
        moving_key: str = "moving_image",
        fixed_key: str = "fixed_image",
        moving_label_key: str = "moving_label",
        fixed_label_key: str = "fixed_label",
        padding_mode: str = "border",
    ) -> None:
        self.moving_key = moving_key
        self.fixed_key = fixed_key
        self.moving_label_key = moving_label_key
        self.fixed_label_key = fixed_label_key
        self.inferer = PairInferer(padding_mode=padding_mode)
        self.label_warp = _make_warp("nearest", "border")

    def __call__(self, engine: Any, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device, non_blocking = engine.state.device, getattr(engine, "non_blocking", False)
        to_kwargs = getattr(engine, "to_kwargs", {}) or {}
        moving, fixed = _pair_tensors(batchdata, self.moving_key, self.fixed_key)
        inferer = engine.inferer if isinstance(getattr(engine, "inferer", None), PairInferer) else self.inferer
        pair = torch.cat([_to(moving, device, non_blocking, **to_kwargs), _to(fixed, device, non_blocking)], dim=1)
        with engine.mode(engine.network):
            if getattr(engine, "amp", False) and torch.device(device or "cpu").type == "cuda":
                with torch.autocast("cuda", **(getattr(engine, "amp_kwargs", {}) or {})):
                    warped, ddf = inferer(pair, engine.network)
            else:
                warped, ddf = inferer(pair, engine.network)
        warped, ddf = warped.float(), ddf.float()
        names = _pair_names(moving, fixed, pair.shape[0])
        output: dict[str, Any] = {
            self.moving_key: moving,
            self.fixed_key: fixed,
            "warped_image": _like(warped, fixed, names),
            "ddf": _like(ddf, fixed, names),
        }
        if self.moving_label_key in batchdata:
            moving_label = batchdata[self.moving_label_key]
            with torch.no_grad():
                warped_label = self.label_warp(_to(moving_label, ddf.device, non_blocking).float(), ddf)
            output[self.moving_label_key] = moving_label
            output["warped_label"] = _like(warped_label, fixed, names)
            if self.fixed_label_key in batchdata:
                output[self.fixed_label_key] = _to(batchdata[self.fixed_label_key], ddf.device, non_blocking)
        engine.state.output = output
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output


def pair_name_formatter(metadict: dict, saver: Any) -> dict:
    """
    ``output_name_formatter`` for ``SaveImaged``: name the file after ``filename_or_obj`` as it is (the pair name
    set by :py:class:`RegistrationIteration`, such as ``"pair_000_moving_image_to_pair_000_fixed_image"``),
    without MONAI's default of using the file's stem only.
    """
    subject = metadict.get("filename_or_obj", "") if metadict else ""
    return {"subject": _stem(str(subject)) or "pair", "idx": metadict.get("patch_index") if metadict else None}


class PairNamed(MapTransform):
    """
    Set ``filename_or_obj`` of the MetaTensors under ``keys`` to ``"<moving stem>_to_<fixed stem>"``, read from the
    metadata of ``moving_key`` and ``fixed_key``, so that ``SaveImaged`` (with :py:func:`pair_name_formatter`)
    names each output after its pair. Use it after ``Invertd``, which replaces the metadata with the fixed image's.
    """

    def __init__(
        self,
        keys: Any,
        moving_key: str = "moving_image",
        fixed_key: str = "fixed_image",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.moving_key = moving_key
        self.fixed_key = fixed_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        names = []
        for key in (self.moving_key, self.fixed_key):
            value = d.get(key)
            name = value.meta.get("filename_or_obj") if isinstance(value, MetaTensor) else None
            names.append(_stem(str(name)) if name else key)
        for key in self.key_iterator(d):
            if isinstance(d[key], MetaTensor):
                d[key].meta["filename_or_obj"] = f"{names[0]}_to_{names[1]}"
        return d


def _stem(path: str) -> str:
    """File name without its folder and image suffix (``/a/b.nii.gz`` -> ``b``)."""
    name = os.path.basename(str(path))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".pt"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
