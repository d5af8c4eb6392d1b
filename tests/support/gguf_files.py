"""GGUF files as the quantised FLUX.1 / SD 3.x transformers on model sites are laid out (the
original key names, no prefix, `general.architecture` "flux" / "sd3"), written with the `gguf`
package: matrices whose rows are a whole number of 32-weight blocks stored as Q8_0, the rest
(norms, biases, narrow matrices) as F32, as the published quantisers leave small tensors.
Test-only: the app never imports it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

Q8_BLOCK = 32


def q8_0_round_trip(tensor: torch.Tensor) -> torch.Tensor:
    """The reference Q8_0 quantisation (computed here, not by gguf): per block of 32 weights along
    a row, a float16 scale d = max|w| / 127 and int8 q = round(w / d); read back as d * q in
    float16, as the GGUF dequantisers compute it."""
    blocks = tensor.detach().float().reshape(-1, Q8_BLOCK)
    exact_scale = blocks.abs().amax(dim=1, keepdim=True) / 127
    safe = torch.where(exact_scale == 0, 1, exact_scale)
    quantised = torch.round(blocks / safe)
    return (exact_scale.half() * quantised.half()).float().reshape(tensor.shape)


def is_quantised(tensor: torch.Tensor) -> bool:
    return tensor.ndim >= 2 and tensor.shape[-1] % Q8_BLOCK == 0


def write_gguf(state: dict[str, torch.Tensor], path: Path, architecture: str) -> Path:
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch=architecture)
    for key, tensor in state.items():
        data = tensor.detach().float().contiguous().numpy()
        if is_quantised(tensor):
            writer.add_tensor(key, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(key, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
