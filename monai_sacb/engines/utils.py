# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch

__all__ = ["PreparePairBatch"]


def _plain(value: Any, device: torch.device | str | None, non_blocking: bool, **kwargs: Any) -> torch.Tensor:
    """``value`` as a plain tensor on ``device``: the network's outputs then carry no moving-image metadata."""
    if isinstance(value, MetaTensor):
        value = value.as_tensor()
    return torch.as_tensor(value).to(device=device, non_blocking=non_blocking, **kwargs)


class PreparePairBatch(PrepareBatch):
    """
    ``prepare_batch`` of :py:class:`monai.engines.SupervisedTrainer` and :py:class:`monai.engines.SupervisedEvaluator`
    for registration pairs: ``(inputs, targets) = (cat([moving, fixed], dim=1), batch[target_key])`` as plain
    tensors on ``device``. The engine then calls ``inferer(inputs, network)`` (a
    :py:class:`monai_sacb.inferers.PairInferer`) and, in training, ``loss_function(pred, targets)``.

    The batch's MetaTensors stay in ``engine.state.batch`` for the postprocessing (``Invertd`` and ``SaveImaged``
    read the fixed image's geometry there).

    Args:
        moving_key: key of the moving image in the batch.
        fixed_key: key of the fixed image in the batch.
        target_key: key of the targets, stored by the engines as ``engine.state.output["label"]``: the fixed
            image for training (the loss compares it with the warped image), the fixed label map for validation
            (``from_engine(["warped_label", "label"])``). The targets are None when the batch has no such key
            (a pair without label maps). A sequence of keys makes the targets a dictionary of those present, e.g.
            ``["fixed_image", "moving_label", "fixed_label"]`` for a loss with a label term
            (:py:class:`monai_sacb.losses.RegistrationLoss` with ``label_weight > 0``).
    """

    def __init__(
        self,
        moving_key: str = "moving_image",
        fixed_key: str = "fixed_image",
        target_key: str | Sequence[str] | None = "fixed_image",
    ) -> None:
        self.moving_key = moving_key
        self.fixed_key = fixed_key
        self.target_key = target_key

    def __call__(
        self,
        batchdata: Mapping[Hashable, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor] | None]:
        missing = [k for k in (self.moving_key, self.fixed_key) if k not in batchdata]
        if missing:
            raise KeyError(
                f"batch has no {missing}; a registration batch needs '{self.moving_key}' and '{self.fixed_key}' "
                f"(keys found: {sorted(map(str, batchdata))}). Check the datalist format and the pair transforms."
            )
        moving = _plain(batchdata[self.moving_key], device, non_blocking, **kwargs)
        fixed = _plain(batchdata[self.fixed_key], device, non_blocking, **kwargs)
        if self.target_key is None or isinstance(self.target_key, str):
            targets = batchdata.get(self.target_key) if self.target_key is not None else None
            if targets is not None:
                targets = _plain(targets, device, non_blocking, **kwargs)
        else:
            targets = {
                key: _plain(batchdata[key], device, non_blocking, **kwargs) for key in self.target_key if key in batchdata
            }
        return torch.cat([moving, fixed], dim=1), targets
