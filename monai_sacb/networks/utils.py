# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import torch

__all__ = [
    "channels_last_format",
    "compiled_cpu_kernels",
    "cpu_bfloat16_is_fast",
    "deterministic_backward_needed",
    "is_exporting",
    "use_cpu_kernels",
]


def is_exporting() -> bool:
    """
    True while ``torch.jit`` traces or scripts, ``torch.onnx`` or ``torch.export`` exports, or ``torch.compile``
    compiles. Blocks choose between their plain formulation and their CPU kernel with :py:func:`use_cpu_kernels`;
    this alone guards what must stay out of a recorded graph whatever the device (data-dependent checks such as
    the input NaN test).
    """
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
    )


def use_cpu_kernels(tensor: torch.Tensor) -> bool:
    """
    The one decision point between a block's plain PyTorch formulation and its CPU kernel: True when ``tensor``
    is on the CPU and nothing is tracing, scripting, exporting or compiling (:py:func:`is_exporting`).

    The CPU kernels (oneDNN convolutions called directly, the fused in-place norm, the patch-wise adaptive
    convolution, reused buffers and in-place overwrites, the slab-threaded warp) exist because on a few CPU
    threads fresh memory and PyTorch's CPU heuristics cost more than these narrow layers' arithmetic. They compute
    the same function as the plain formulation, which every block keeps first as the readable reference and which
    is taken everywhere else:

    - CUDA: cuDNN and the caching allocator already make the plain ops fast, and oneDNN does not run there;
    - tracing and ``torch.onnx``/``torch.export`` export: the recorded graph must hold standard operators only
      (no ``aten.mkldnn_*`` calls, no custom ``autograd.Function``, no writes into views of other tensors) to run
      on any device and runtime;
    - ``torch.compile``: the compiler fuses the plain ops and plans their memory itself; the kernels' custom
      autograd functions and in-place writes would only get in its way.

    A block may add conditions of its own kernel (dtype, oneDNN availability), never drop these. One kernel has a
    second use off the CPU: the fused norm's autograd function also trains on CUDA GPUs, because it keeps half
    the memory for backward (:py:func:`~monai_sacb.networks.blocks.instance_norm_leaky_relu`).
    """
    return tensor.device.type == "cpu" and not is_exporting()


def compiled_cpu_kernels(*tensors: torch.Tensor):
    """
    The optional compiled kernels (:py:func:`~monai_sacb.networks.blocks.numba_kernels.numba_kernels`) for a
    computation on ``tensors`` that :py:func:`use_cpu_kernels` allows and autograd will not differentiate (the
    kernels have no backward), or None: also without numba, with ``MONAI_SACB_NUMBA=0``, outside the main thread
    and in ``DataLoader`` workers. Callers test their own kernel's conditions (dtype, dimensions) first: this
    imports numba on first use, which takes a few tenths of a second.
    """
    if not all(use_cpu_kernels(tensor) for tensor in tensors):
        return None
    if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors):
        return None
    from monai_sacb.networks.blocks.numba_kernels import numba_kernels

    return numba_kernels()


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """The channels-last memory format of a (B, C, *S) tensor with 2 or 3 spatial dimensions."""
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def cpu_bfloat16_is_fast() -> bool:
    """
    Whether this CPU runs SACB-Net's bfloat16 convolutions (``torch.autocast("cpu", dtype=torch.bfloat16)``) faster
    than float32: oneDNN built, enabled and supporting bfloat16, and AMX tiles (Intel Xeon Sapphire Rapids and
    later), with which these narrow 3D convolutions ran about 5x faster than in float32 (a Xeon with AMX, 2
    threads). Without AMX, oneDNN emulates bfloat16 with AVX-512 or not at all, and the conversions around the
    float32 parts (k-means, matching, warps) cost extra: not measured here, so the answer there is False.
    """
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx()) if callable(amx) else False


def deterministic_backward_needed(*tensors: torch.Tensor) -> bool:
    """
    True when autograd will differentiate through one of ``tensors`` on a GPU while
    ``torch.use_deterministic_algorithms(True)`` is set (``monai.utils.set_determinism(...,
    use_deterministic_algorithms=True)``, the bundle's ``--deterministic True``). PyTorch's CUDA backward passes of
    ``grid_sample`` and of linear ``interpolate`` add with atomics and refuse to run in that mode; the warp and
    the resizing then take formulations of gathers and index selections, whose backward passes are deterministic
    there (:py:func:`~monai_sacb.networks.blocks.warp_with_ddf`, :py:func:`~monai_sacb.networks.blocks.linear_resize`).
    """
    return (
        torch.are_deterministic_algorithms_enabled()
        and torch.is_grad_enabled()
        and any(t.requires_grad and t.device.type != "cpu" for t in tensors)
    )
