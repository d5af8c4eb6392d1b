"""GGUF K-quants (Q4_K, Q5_K, Q6_K), as most quantised FLUX.1 files on model sites are stored,
through the user's path: a transformer-only .gguf in models/Stable-diffusion loads with its parts
from models/text_encoder and models/VAE, and every quantised weight, dequantised by diffusers'
GGUF layers, equals (to float16 rounding) gguf's own dequantisation of the bytes in the file
(renamed from BFL's keys to diffusers', fused rows split), and the model generates.

The gguf package writes K-quant files but cannot quantise to them, so the blocks are random bytes
with finite scales: any such bytes are a valid K-quant block. K-quant blocks span 256 weights of a
row, so this FLUX transformer is 256 wide (the other parts are the tiny ones)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.devices import DeviceConfig
from engine.files import HashCache
from engine.families.flux_keys import bfl_to_diffusers
from engine.models.pipelines import ModelManager
from engine.models.registry import ModelRegistry
from tests.support.flow_tree import write_flow_tree
from tests.support.flow_writers import flux_to_bfl

gguf = pytest.importorskip("gguf")

WIDE_FLUX = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64, "num_layers": 1,
             "num_single_layers": 1, "attention_head_dim": 128, "num_attention_heads": 2, "joint_attention_dim": 32,
             "pooled_projection_dim": 32, "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]}
KINDS = ("Q4_K", "Q5_K", "Q6_K")
# Where the float16 scale(s) of a block sit: Q4_K/Q5_K start with d and dmin, Q6_K ends with d.
SCALE_BYTES = {"Q4_K": (0, 4), "Q5_K": (0, 4), "Q6_K": (208, 210)}


def _random_blocks(rows: int, columns: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, kind)]
    raw = rng.integers(0, 256, size=(rows, columns // block, size), dtype=np.uint8)
    start, end = SCALE_BYTES[kind]
    scales = rng.uniform(0.001, 0.01, size=(rows, columns // block, (end - start) // 2)).astype(np.float16)
    raw[:, :, start:end] = scales.view(np.uint8).reshape(rows, columns // block, end - start)
    return raw.reshape(rows, -1)


@pytest.fixture(scope="module")
def k_quant_file(tmp_path_factory):
    from diffusers import FluxTransformer2DModel

    root = tmp_path_factory.mktemp("kquants")
    write_flow_tree(root)
    (root / "configs" / "flux-schnell" / "transformer" / "config.json").write_text(json.dumps(WIDE_FLUX))
    torch.manual_seed(0)
    original = flux_to_bfl(FluxTransformer2DModel.from_config({k: v for k, v in WIDE_FLUX.items()
                                                               if not k.startswith("_")}))
    rng = np.random.default_rng(0)
    path = root / "models" / "Stable-diffusion" / "flux1-schnell-Q4_K_S.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    expected, kinds = {}, {}
    for index, (key, tensor) in enumerate(sorted(original.items())):
        if tensor.ndim == 2 and tensor.shape[1] % 256 == 0:
            kind = KINDS[index % len(KINDS)]
            raw = _random_blocks(*tensor.shape, kind, rng)
            qtype = getattr(gguf.GGMLQuantizationType, kind)
            writer.add_tensor(key, raw, raw_dtype=qtype)
            expected[key] = torch.from_numpy(gguf.quants.dequantize(raw, qtype).astype(np.float32))
            kinds[kind] = kinds.get(kind, 0) + 1
        else:
            writer.add_tensor(key, tensor.detach().float().numpy())
            expected[key] = tensor.detach().float()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert set(kinds) == set(KINDS)
    return root, path, bfl_to_diffusers(expected)


def test_k_quant_weights_dequantise_as_gguf_does(k_quant_file):
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    root, path, expected = k_quant_file
    registry = ModelRegistry([root / "models" / "Stable-diffusion"], HashCache(root / "cache.json"))
    models = ModelManager(registry, DeviceConfig.choose(use_cpu=True), config_root=root / "configs")
    model = models.load(path.name, modules=())
    try:
        state = model.base.transformer.state_dict()
        assert sorted(state) == sorted(expected)
        quantised = [key for key, value in state.items() if isinstance(value, GGUFParameter)]
        assert len(quantised) >= 6
        for key, value in state.items():
            got = dequantize_gguf_tensor(value).float().reshape(expected[key].shape)
            if key in quantised:
                # diffusers' K-quant dequantisers compute in float16 (gguf's in float32).
                torch.testing.assert_close(got, expected[key], rtol=4e-3, atol=4e-3, msg=key)
            else:
                assert torch.equal(got, expected[key]), key
        assert model.module_files == ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors")

        from engine.addons import AddOns
        from engine.job_results import OutputPolicy
        from engine.jobs import Job
        from engine.request import GenerationRequest
        from engine.runs.generation import GenerationRun
        request = GenerationRequest(prompt="a quantised fox", width=64, height=64, steps=2, seed=1,
                                    sampler_name="Euler", cfg_scale=1.0).validate()
        addons = AddOns.in_data_dir(root, HashCache(root / "cache.json"))
        result = GenerationRun(Job(lambda job: None), request, model, OutputPolicy(save_images=False), addons).run(None)
        pixels = np.asarray(result.images[0])
        assert pixels.shape == (64, 64, 3) and np.isfinite(pixels).all()
    finally:
        models.unload()
