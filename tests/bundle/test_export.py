# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""verify_metadata, verify_net_in_out, ckpt_export (traced) and onnx_export of the bundle's network."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_sacb.networks import SACBNetBackbone

# the project's reference material sits beside the repository (../shared); user clones do not have it
SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "monai" / "meta_schema_20240725.json"
SHAPE = [1, 2, 32, 32, 32]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "model.pt"
    torch.save({"model": SACBNetBackbone().state_dict()}, path)
    return path


def _reference(checkpoint, pair, bundle_network):
    net = bundle_network()
    net.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        return net.eval()(pair)


@pytest.mark.skipif(not SCHEMA.is_file(), reason="needs a local copy of the 20240725 metadata schema")
def test_verify_metadata(bundle_configs):
    from monai.bundle import verify_metadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verify_metadata(meta_file=bundle_configs.meta, filepath=str(SCHEMA))


def test_verify_net_in_out(bundle_configs):
    from monai.bundle import verify_net_in_out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verify_net_in_out(net_id="network_def", meta_file=bundle_configs.meta, config_file=bundle_configs.inference, n=2, any=1, device="cpu")


def test_ckpt_export_traced_matches_pytorch(checkpoint, tmp_path, bundle_configs, bundle_network):
    from monai.bundle import ckpt_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt_export(
            net_id="network_def",
            filepath=str(tmp_path / "model.ts"),
            ckpt_file=str(checkpoint),
            meta_file=bundle_configs.meta,
            config_file=bundle_configs.inference,
            key_in_ckpt="model",
            use_trace=True,
            input_shape=SHAPE,
        )
        exported = torch.jit.load(str(tmp_path / "model.ts"))
    pair = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))  # not the tracing input
    # the trace records PyTorch's plain instance_norm/convolution ops, eager CPU mode runs the fused ones: the same
    # function, equal up to float32 rounding
    with torch.no_grad():
        torch.testing.assert_close(exported(pair), _reference(checkpoint, pair, bundle_network), rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="needs onnx and onnxruntime",
)
def test_onnx_export_matches_pytorch(checkpoint, tmp_path, bundle_configs, bundle_network):
    import onnxruntime

    from monai.bundle import onnx_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export(
            net_id="network_def",
            filepath=str(tmp_path / "model.onnx"),
            ckpt_file=str(checkpoint),
            meta_file=bundle_configs.meta,
            config_file=bundle_configs.inference,
            key_in_ckpt="model",
            use_trace=True,
            input_shape=SHAPE,
        )
    pair = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    result = session.run(None, {name: pair.numpy()})[0]
    np.testing.assert_allclose(result, _reference(checkpoint, pair, bundle_network).numpy(), rtol=1e-3, atol=1e-3)
