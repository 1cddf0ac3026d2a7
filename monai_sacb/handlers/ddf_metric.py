# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

"""Ignite metric handler base for metrics of a displacement field alone (optionally with a mask)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monai.handlers import IgniteMetricHandler
from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.metrics.metric import reinit__is_reduced
else:
    reinit__is_reduced, _ = optional_import(
        "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "reinit__is_reduced", as_type="decorator"
    )

__all__ = ["DDFMetricHandler"]


class DDFMetricHandler(IgniteMetricHandler):
    """
    :py:class:`monai.handlers.IgniteMetricHandler` for metrics whose input is a ddf, with an optional mask
    (:py:class:`monai_sacb.metrics.FoldingMetric`, :py:class:`monai_sacb.metrics.SDLogJacobianMetric`).

    ``output_transform`` may return:

    - a tuple ``(ddf,)`` or ``(ddf, mask)``, as ``from_engine(["ddf"])`` / ``from_engine(["ddf", "label"])``
      give for a dict ``engine.state.output``;
    - the ddf itself: a batch-first tensor (B, spatial_dims, *spatial), or a list of channel-first ddfs, as
      ``from_engine(["ddf"])`` gives for a decollated (list of dicts) output.

    A tuple is always read as ``(ddf[, mask])``, never as a sequence of per-case ddfs; use a list for those.
    """

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        """
        Args:
            output: ``(ddf,)``, ``(ddf, mask)``, or the ddf (tensor or list of channel-first tensors).

        Raises:
            ValueError: when ``output`` is a tuple whose length is not 1 or 2.
        """
        if isinstance(output, tuple):
            if len(output) not in (1, 2):
                raise ValueError(f"output must be (ddf,) or (ddf, mask), got a tuple of length {len(output)}.")
            ddf, mask = output[0], (output[1] if len(output) == 2 else None)
        else:
            ddf, mask = output, None
        self.metric_fn(ddf, mask)
