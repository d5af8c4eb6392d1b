"""LDSR's files (engine/postprocess/ldsr.py runs the model): finding model.safetensors / model.ckpt
and project.yaml in models/LDSR, reading the checkpoint without running its pickled code, and
renaming the CompVis latent-diffusion keys into diffusers' UNet2DModel and VQModel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import RequestError

# The file names the ecosystem looks for, the .safetensors one first (as it prefers it);
# model.pth is the name older versions downloaded it under.
MODEL_FILES = ("model.safetensors", "model.ckpt", "model.pth")
CONFIG_FILE = "project.yaml"


@dataclass(frozen=True)
class LdsrConfig:
    """The numbers of project.yaml the network's shape and schedule depend on; the defaults are
    those of the published LDSR model (CompVis' bsr_sr config)."""

    linear_start: float = 0.0015
    linear_end: float = 0.0155
    timesteps: int = 1000
    scale_factor: float = 1.0
    # UNet (openaimodel)
    in_channels: int = 6
    out_channels: int = 3
    model_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_head_channels: int = 32
    num_heads: int = -1
    use_scale_shift_norm: bool = False
    # VQ autoencoder
    embed_dim: int = 3
    n_embed: int = 8192
    z_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    vq_res_blocks: int = 2
    vq_attn_resolutions: tuple[int, ...] = ()
    image_channels: int = 3

    @classmethod
    def from_yaml(cls, path: Path) -> "LdsrConfig":
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            params = data["model"]["params"]
        except Exception as error:  # unreadable YAML, or not a latent-diffusion config
            raise RequestError(f"LDSR: '{path}' is not a latent-diffusion project.yaml ({error})",
                               "upscaler") from error
        unet = (params.get("unet_config") or {}).get("params") or {}
        first = (params.get("first_stage_config") or {}).get("params") or {}
        dd = first.get("ddconfig") or {}
        base = cls()
        pick = lambda source, key, default: source.get(key, default)  # noqa: E731
        try:
            return cls(
                linear_start=float(pick(params, "linear_start", base.linear_start)),
                linear_end=float(pick(params, "linear_end", base.linear_end)),
                timesteps=int(pick(params, "timesteps", base.timesteps)),
                scale_factor=float(pick(params, "scale_factor", base.scale_factor)),
                in_channels=int(pick(unet, "in_channels", base.in_channels)),
                out_channels=int(pick(unet, "out_channels", base.out_channels)),
                model_channels=int(pick(unet, "model_channels", base.model_channels)),
                channel_mult=tuple(int(v) for v in pick(unet, "channel_mult", base.channel_mult)),
                num_res_blocks=int(pick(unet, "num_res_blocks", base.num_res_blocks)),
                attention_resolutions=tuple(int(v) for v in pick(unet, "attention_resolutions",
                                                                  base.attention_resolutions)),
                num_head_channels=int(pick(unet, "num_head_channels", -1)),
                num_heads=int(pick(unet, "num_heads", -1)),
                use_scale_shift_norm=bool(pick(unet, "use_scale_shift_norm", False)),
                embed_dim=int(pick(first, "embed_dim", base.embed_dim)),
                n_embed=int(pick(first, "n_embed", base.n_embed)),
                z_channels=int(pick(dd, "z_channels", base.z_channels)),
                ch=int(pick(dd, "ch", base.ch)),
                ch_mult=tuple(int(v) for v in pick(dd, "ch_mult", base.ch_mult)),
                vq_res_blocks=int(pick(dd, "num_res_blocks", base.vq_res_blocks)),
                vq_attn_resolutions=tuple(int(v) for v in pick(dd, "attn_resolutions", ()) or ()),
                image_channels=int(pick(dd, "in_channels", base.image_channels)),
            )
        except (TypeError, ValueError) as error:
            raise RequestError(f"LDSR: '{path}' has a value of the wrong kind ({error})", "upscaler") from error

    @property
    def head_dim(self) -> int:
        if self.num_head_channels > 0:
            return self.num_head_channels
        if self.num_heads > 0:
            widths = {self.model_channels * m for level, m in enumerate(self.channel_mult)
                      if 2 ** level in self.attention_resolutions} | {self.model_channels * self.channel_mult[-1]}
            dims = {width // self.num_heads for width in widths}
            if len(dims) == 1:
                return dims.pop()
        raise RequestError("LDSR: project.yaml's attention heads (num_heads with differing widths) "
                           "cannot be built here", "upscaler")

    def attention_levels(self) -> list[bool]:
        return [2 ** level in self.attention_resolutions for level in range(len(self.channel_mult))]


# Files.
def model_file(folder: Path) -> Path | None:
    """The LDSR weights in `folder` under one of the ecosystem's names (case ignored), or None."""
    if not folder.is_dir():
        return None
    found = {path.name.lower(): path for path in folder.iterdir() if path.is_file()}
    return next((found[name] for name in MODEL_FILES if name in found), None)


def config_file(folder: Path) -> Path | None:
    path = folder / CONFIG_FILE
    return path if path.is_file() else None


def missing_message(folder: Path) -> str:
    return (f"LDSR needs its model files: put the ecosystem's LDSR model.ckpt (or model.safetensors) "
            f"and its project.yaml into {folder} (models/LDSR, or the folder --ldsr-models-path names), "
            "then choose LDSR again. Until then use R-ESRGAN 4x+, SwinIR 4x or ESRGAN_4x")


class _Inert:
    """Stands in for PyTorch Lightning's ModelCheckpoint class, which old training checkpoints
    name as a dictionary key of their 'callbacks' entry: only the name is resolved, nothing runs."""


_LIGHTNING_NAMES = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of model.ckpt/.pth (weights-only unpickling: plain tensors and containers)
    or model.safetensors."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise RequestError(f"LDSR: '{path.name}' could not be read as .safetensors ({error})",
                               "upscaler") from error
    allowed = [(_Inert, name) for name in _LIGHTNING_NAMES]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        needed = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        why = (f"it would need the Python object {needed.group(1)}" if needed
               else f"it is not a PyTorch file of plain weights ({type(error).__name__})")
        raise RequestError(
            f"LDSR: '{path.name}' was refused: {why}. Pickles that need more than tensors and "
            "plain containers can run code, so they are not opened; a model.safetensors of the "
            "same weights works too.", "upscaler") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise RequestError(f"LDSR: '{path.name}' does not hold a state dict", "upscaler")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


# Key conversion (CompVis -> diffusers).
def _resnet(src: dict, old: str, new: str, out: dict) -> None:
    names = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
    for before, after in names.items():
        for kind in ("weight", "bias"):
            key = f"{old}.{before}.{kind}"
            if key in src:
                out[f"{new}.{after}.{kind}"] = src[key]


def _unet_attention(src: dict, old: str, new: str, head_dim: int, out: dict) -> None:
    """openaimodel's AttentionBlock (one qkv 1-d convolution, heads interleaved as q, k, v per
    head: the 'legacy' order) into separate to_q / to_k / to_v linear layers."""
    out[f"{new}.group_norm.weight"] = src[f"{old}.norm.weight"]
    out[f"{new}.group_norm.bias"] = src[f"{old}.norm.bias"]
    weight, bias = src[f"{old}.qkv.weight"], src[f"{old}.qkv.bias"]
    channels = weight.shape[1]
    heads = channels // head_dim
    weight = weight.reshape(heads, 3, head_dim, channels)
    bias = bias.reshape(heads, 3, head_dim)
    for index, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{new}.{name}.weight"] = weight[:, index].reshape(channels, channels)
        out[f"{new}.{name}.bias"] = bias[:, index].reshape(channels)
    out[f"{new}.to_out.0.weight"] = src[f"{old}.proj_out.weight"].reshape(channels, channels)
    out[f"{new}.to_out.0.bias"] = src[f"{old}.proj_out.bias"]


def convert_unet(src: dict, config: LdsrConfig) -> dict:
    """`model.diffusion_model.` keys (prefix removed) in UNet2DModel's names."""
    out: dict = {}
    copy = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
            "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
    for before, after in copy.items():
        for kind in ("weight", "bias"):
            out[f"{after}.{kind}"] = src[f"{before}.{kind}"]
    levels, blocks, attn, head = len(config.channel_mult), config.num_res_blocks, config.attention_levels(), config.head_dim
    index = 1
    for level in range(levels):
        for block in range(blocks):
            _resnet(src, f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{block}", out)
            if attn[level]:
                _unet_attention(src, f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{block}", head, out)
            index += 1
        if level < levels - 1:
            for kind in ("weight", "bias"):
                out[f"down_blocks.{level}.downsamplers.0.conv.{kind}"] = src[f"input_blocks.{index}.0.op.{kind}"]
            index += 1
    _resnet(src, "middle_block.0", "mid_block.resnets.0", out)
    _unet_attention(src, "middle_block.1", "mid_block.attentions.0", head, out)
    _resnet(src, "middle_block.2", "mid_block.resnets.1", out)
    index = 0
    for up in range(levels):
        level = levels - 1 - up
        for block in range(blocks + 1):
            _resnet(src, f"output_blocks.{index}.0", f"up_blocks.{up}.resnets.{block}", out)
            if attn[level]:
                _unet_attention(src, f"output_blocks.{index}.1", f"up_blocks.{up}.attentions.{block}", head, out)
            if block == blocks and level > 0:
                at = 2 if attn[level] else 1
                for kind in ("weight", "bias"):
                    out[f"up_blocks.{up}.upsamplers.0.conv.{kind}"] = src[f"output_blocks.{index}.{at}.conv.{kind}"]
            index += 1
    return out


def _vq_resnet(src: dict, old: str, new: str, out: dict) -> None:
    for before, after in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"),
                          ("conv2", "conv2"), ("nin_shortcut", "conv_shortcut")):
        for kind in ("weight", "bias"):
            if f"{old}.{before}.{kind}" in src:
                out[f"{new}.{after}.{kind}"] = src[f"{old}.{before}.{kind}"]


def _vq_attention(src: dict, old: str, new: str, out: dict) -> None:
    """The autoencoder's single-head AttnBlock (1x1 convolutions) as linear layers."""
    for before, after in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"),
                          ("proj_out", "to_out.0")):
        weight = src[f"{old}.{before}.weight"]
        out[f"{new}.{after}.weight"] = weight.reshape(weight.shape[0], -1) if weight.ndim == 4 else weight
        out[f"{new}.{after}.bias"] = src[f"{old}.{before}.bias"]


def convert_vq(src: dict, config: LdsrConfig) -> dict:
    """`first_stage_model.` keys (prefix removed) in VQModel's names."""
    out: dict = {}
    for name in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                 "quant_conv", "post_quant_conv"):
        for kind in ("weight", "bias"):
            out[f"{name}.{kind}"] = src[f"{name}.{kind}"]
    for part in ("encoder", "decoder"):
        for kind in ("weight", "bias"):
            out[f"{part}.conv_norm_out.{kind}"] = src[f"{part}.norm_out.{kind}"]
        _vq_resnet(src, f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", out)
        _vq_attention(src, f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", out)
        _vq_resnet(src, f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", out)
    out["quantize.embedding.weight"] = src["quantize.embedding.weight"]
    levels = len(config.ch_mult)
    for level in range(levels):
        for block in range(config.vq_res_blocks):
            _vq_resnet(src, f"encoder.down.{level}.block.{block}", f"encoder.down_blocks.{level}.resnets.{block}", out)
        if level < levels - 1:
            for kind in ("weight", "bias"):
                out[f"encoder.down_blocks.{level}.downsamplers.0.conv.{kind}"] = src[f"encoder.down.{level}.downsample.conv.{kind}"]
    for up in range(levels):
        level = levels - 1 - up
        for block in range(config.vq_res_blocks + 1):
            _vq_resnet(src, f"decoder.up.{level}.block.{block}", f"decoder.up_blocks.{up}.resnets.{block}", out)
        if level > 0:
            for kind in ("weight", "bias"):
                out[f"decoder.up_blocks.{up}.upsamplers.0.conv.{kind}"] = src[f"decoder.up.{level}.upsample.conv.{kind}"]
    return out


def build_models(state: dict, config: LdsrConfig):
    """(UNet2DModel, VQModel) with the checkpoint's weights; RequestError when they do not fit."""
    from diffusers import UNet2DModel, VQModel

    if config.vq_attn_resolutions:
        raise RequestError("LDSR: an autoencoder with attention outside its middle block "
                           "(attn_resolutions in project.yaml) cannot be built here", "upscaler")
    unet_src = {k[len("model.diffusion_model."):]: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    vq_src = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    if not unet_src or not vq_src:
        raise RequestError("LDSR: the model file has no 'model.diffusion_model.' or no "
                           "'first_stage_model.' weights: it is not an LDSR checkpoint", "upscaler")
    attn = config.attention_levels()
    widths = tuple(config.model_channels * m for m in config.channel_mult)
    unet = UNet2DModel(
        in_channels=config.in_channels, out_channels=config.out_channels, block_out_channels=widths,
        layers_per_block=config.num_res_blocks, attention_head_dim=config.head_dim,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
        resnet_time_scale_shift="scale_shift" if config.use_scale_shift_norm else "default")
    vq = VQModel(
        in_channels=config.image_channels, out_channels=config.image_channels,
        down_block_types=("DownEncoderBlock2D",) * len(config.ch_mult),
        up_block_types=("UpDecoderBlock2D",) * len(config.ch_mult),
        block_out_channels=tuple(config.ch * m for m in config.ch_mult),
        layers_per_block=config.vq_res_blocks, latent_channels=config.z_channels,
        num_vq_embeddings=config.n_embed, vq_embed_dim=config.embed_dim, norm_num_groups=32)
    try:
        for model, converted in ((unet, convert_unet(unet_src, config)), (vq, convert_vq(vq_src, config))):
            missing, unexpected = model.load_state_dict(converted, strict=False)
            if missing:
                raise RuntimeError(f"missing {', '.join(missing[:3])}")
    except (KeyError, RuntimeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RequestError(f"LDSR: the model file does not match project.yaml's network ({first})",
                           "upscaler") from error
    return unet.eval(), vq.eval()


# Sampling.
