"""Tiny IP-Adapters and CLIP image encoders in the layouts users download, for the tiny SD 1.x UNet.

* ``write_ip_adapter(unet, path, kind)``: an IP-Adapter ``.safetensors`` with the original release's
  flat keys: ``image_proj.*`` ("plain": proj + norm as in ip-adapter_sd15; "plus": the Resampler
  of ip-adapter-plus_sd15, ``latents``/``proj_in``/``layers.N.0.to_q``...; "faceid": proj.0/proj.2 +
  norm as in ip-adapter-faceid_sd15; "faceid plus": those and ``perceiver_resampler.*``) and
  ``ip_adapter.K.to_k_ip.weight``/``to_v_ip.weight`` for every cross-attention layer K (1, 3, 5...).
* ``tiny_encoder()``: a seeded CLIPVisionModelWithProjection; ``write_encoder_folder`` /
  ``write_encoder_file`` save it as a transformers folder or as one file in its key layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

ENCODER = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 1,
           "projection_dim": 48, "image_size": 32, "patch_size": 8, "hidden_act": "gelu"}
TOKENS = 4          # image tokens of a plain adapter (diffusers' fixed count)
PLUS_QUERIES = 6    # the Resampler's latent queries
PLUS_WIDTH = 64     # its inner width (one 64-wide head)


def tiny_encoder(seed: int = 0, **changes):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**{**ENCODER, **changes})).eval()


def write_encoder_folder(folder: Path, seed: int = 0) -> Path:
    tiny_encoder(seed).save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def write_encoder_file(path: Path, seed: int = 0, **changes) -> Path:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_encoder(seed, **changes).state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return Path(path)


def _cross_attention_widths(unet) -> list[int]:
    """The width of each cross-attention layer, in the order of the UNet's attention processors."""
    widths = []
    blocks = list(unet.config.block_out_channels)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            widths.append(blocks[-1])
        elif name.startswith("up_blocks"):
            widths.append(list(reversed(blocks))[int(name[len("up_blocks.")])])
        else:
            widths.append(blocks[int(name[len("down_blocks.")])])
    return widths


def ip_adapter_tensors(unet, kind: str = "plain", seed: int = 0, gain: float = 1.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / shape[-1] ** 0.5
        return (torch.randn(*shape, generator=generator) * scale).contiguous()

    cross = unet.config.cross_attention_dim
    tensors: dict[str, torch.Tensor] = {}
    if kind == "plain":
        embed = ENCODER["projection_dim"]
        tensors.update({"image_proj.proj.weight": rand(TOKENS * cross, embed), "image_proj.proj.bias": rand(TOKENS * cross),
                        "image_proj.norm.weight": 1 + rand(cross, scale=0.1), "image_proj.norm.bias": rand(cross)})
    elif kind == "plus":
        embed, width = ENCODER["hidden_size"], PLUS_WIDTH
        tensors.update({"image_proj.latents": rand(1, PLUS_QUERIES, width), "image_proj.proj_in.weight": rand(width, embed),
                        "image_proj.proj_in.bias": rand(width), "image_proj.proj_out.weight": rand(cross, width),
                        "image_proj.proj_out.bias": rand(cross), "image_proj.norm_out.weight": 1 + rand(cross, scale=0.1),
                        "image_proj.norm_out.bias": rand(cross)})
        for layer in range(4):
            base = f"image_proj.layers.{layer}"
            for norm in ("norm1", "norm2"):
                tensors[f"{base}.0.{norm}.weight"] = 1 + rand(width, scale=0.1)
                tensors[f"{base}.0.{norm}.bias"] = rand(width, scale=0.1)
            tensors[f"{base}.0.to_q.weight"] = rand(width, width)
            tensors[f"{base}.0.to_kv.weight"] = rand(2 * width, width)
            tensors[f"{base}.0.to_out.weight"] = rand(width, width)
            tensors[f"{base}.1.0.weight"] = 1 + rand(width, scale=0.1)
            tensors[f"{base}.1.0.bias"] = rand(width, scale=0.1)
            tensors[f"{base}.1.1.weight"] = rand(4 * width, width)
            tensors[f"{base}.1.3.weight"] = rand(width, 4 * width)
    elif kind == "faceid plus":   # the released layout: proj.0/2 and norm, then perceiver_resampler.*
        embed, width = ENCODER["hidden_size"], cross
        tensors.update({"image_proj.proj.0.weight": rand(1024, 512), "image_proj.proj.0.bias": rand(1024),
                        "image_proj.proj.2.weight": rand(TOKENS * cross, 1024), "image_proj.proj.2.bias": rand(TOKENS * cross),
                        "image_proj.norm.weight": 1 + rand(cross, scale=0.1), "image_proj.norm.bias": rand(cross)})
        resampler = "image_proj.perceiver_resampler"
        tensors.update({f"{resampler}.proj_in.weight": rand(width, embed), f"{resampler}.proj_in.bias": rand(width),
                        f"{resampler}.proj_out.weight": rand(cross, width), f"{resampler}.proj_out.bias": rand(cross),
                        f"{resampler}.norm_out.weight": 1 + rand(cross, scale=0.1),
                        f"{resampler}.norm_out.bias": rand(cross)})
        for layer in range(4):
            base = f"{resampler}.layers.{layer}"
            for norm in ("norm1", "norm2"):
                tensors[f"{base}.0.{norm}.weight"] = 1 + rand(width, scale=0.1)
                tensors[f"{base}.0.{norm}.bias"] = rand(width, scale=0.1)
            tensors[f"{base}.0.to_q.weight"] = rand(64, width)       # one 64-wide head
            tensors[f"{base}.0.to_kv.weight"] = rand(128, width)
            tensors[f"{base}.0.to_out.weight"] = rand(width, 64)
            tensors[f"{base}.1.0.weight"] = 1 + rand(width, scale=0.1)
            tensors[f"{base}.1.0.bias"] = rand(width, scale=0.1)
            tensors[f"{base}.1.1.weight"] = rand(4 * width, width)
            tensors[f"{base}.1.3.weight"] = rand(width, 4 * width)
    elif kind == "faceid":
        tensors.update({"image_proj.proj.0.weight": rand(2 * 512, 512), "image_proj.proj.0.bias": rand(1024),
                        "image_proj.proj.2.weight": rand(TOKENS * cross, 1024), "image_proj.proj.2.bias": rand(TOKENS * cross),
                        "image_proj.norm.weight": 1 + rand(cross, scale=0.1), "image_proj.norm.bias": rand(cross)})
    else:
        raise ValueError(kind)
    for number, width in enumerate(_cross_attention_widths(unet)):
        key = 2 * number + 1
        tensors[f"ip_adapter.{key}.to_k_ip.weight"] = rand(width, cross) * gain
        tensors[f"ip_adapter.{key}.to_v_ip.weight"] = rand(width, cross) * gain
    return tensors


def write_ip_adapter(unet, path: Path, kind: str = "plain", seed: int = 0, gain: float = 3.0) -> Path:
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(ip_adapter_tensors(unet, kind, seed, gain), str(path))
    return Path(path)


def write_sdxl_shaped_ip_adapter(path: Path) -> Path:
    """Only the shapes of an SDXL IP-Adapter's first layers (2048-wide context): enough to be
    listed and told apart, not to run."""
    from safetensors.torch import save_file

    tensors = {"image_proj.proj.weight": torch.zeros(8, 4, dtype=torch.float16),
               "image_proj.proj.bias": torch.zeros(8, dtype=torch.float16),
               "image_proj.norm.weight": torch.zeros(2, dtype=torch.float16),
               "image_proj.norm.bias": torch.zeros(2, dtype=torch.float16),
               "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 2048, dtype=torch.float16),
               "ip_adapter.1.to_v_ip.weight": torch.zeros(4, 2048, dtype=torch.float16)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return Path(path)
