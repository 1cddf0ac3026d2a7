# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch

__all__ = ["is_exporting"]


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
