# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch

__all__ = ["channels_last_format", "is_exporting"]


def is_exporting() -> bool:
    """
    True while ``torch.jit`` traces or scripts, ``torch.onnx`` or ``torch.export`` exports, or ``torch.compile``
    compiles: the layers then take their plain PyTorch formulation (no in-place autograd functions, no CPU-only
    oneDNN ops) so that the recorded graph runs anywhere.
    """
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
    )


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """The channels-last memory format of a (B, C, *S) tensor with 2 or 3 spatial dimensions."""
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
