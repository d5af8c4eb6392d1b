"""LDSR from the ecosystem's files (models/LDSR/model.ckpt + project.yaml): a tiny seeded model
written in the CompVis key layout (by a key table of this test's own), checked against diffusers'
LDMSuperResolutionPipeline run directly on the same tiny networks."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, UNet2DModel, VQModel
from PIL import Image

from engine.postprocess import ldsr
from engine.errors import RequestError
from engine.postprocess.extras import ExtrasRequest, upscale
from engine.postprocess.upscalers import UpscalerLibrary

TINY_YAML = """\
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0155
    timesteps: 1000
    cond_stage_key: LR_image
    concat_mode: true
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        in_channels: 6
        out_channels: 3
        model_channels: 32
        attention_resolutions: [2]
        num_res_blocks: 1
        channel_mult: [1, 2]
        num_head_channels: 16
    first_stage_config:
      target: ldm.models.autoencoder.VQModelInterface
      params:
        embed_dim: 3
        n_embed: 16
        ddconfig:
          double_z: false
          z_channels: 3
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [1, 1, 1]
          num_res_blocks: 1
          attn_resolutions: []
    cond_stage_config:
      target: torch.nn.Identity
"""


def tiny_networks() -> tuple[UNet2DModel, VQModel]:
    torch.manual_seed(1234)
    unet = UNet2DModel(in_channels=6, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=16,
                       norm_num_groups=32)
    vq = VQModel(in_channels=3, out_channels=3, block_out_channels=(32, 32, 32), layers_per_block=1,
                 down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                 latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, norm_num_groups=32)
    with torch.no_grad():  # every weight random, norms included, so a misplaced key shows
        for model in (unet, vq):
            for name, param in model.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    param.copy_(1 + 0.2 * torch.randn_like(param))
                elif name.endswith("bias"):
                    param.copy_(0.05 * torch.randn_like(param))
        vq.quantize.embedding.weight.copy_(torch.randn_like(vq.quantize.embedding.weight))
    return unet.eval(), vq.eval()


# This test's own table: diffusers name -> CompVis name, written from the CompVis layout.
def _compvis_resnet(d: str, c: str) -> dict:
    table = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
             "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    return {f"{d}.{a}": f"{c}.{b}" for a, b in table.items()}


def unet_to_compvis(unet: UNet2DModel) -> dict:
    sd = unet.state_dict()
    prefix = "model.diffusion_model."
    names = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    # input_blocks: 1 = level 0 resnet, 2 = downsample, 3 = level 1 resnet (+ attention)
    names.update(_compvis_resnet("down_blocks.0.resnets.0", "input_blocks.1.0"))
    names["down_blocks.0.downsamplers.0.conv"] = "input_blocks.2.0.op"
    names.update(_compvis_resnet("down_blocks.1.resnets.0", "input_blocks.3.0"))
    attentions = {"down_blocks.1.attentions.0": "input_blocks.3.1", "mid_block.attentions.0": "middle_block.1"}
    names.update(_compvis_resnet("mid_block.resnets.0", "middle_block.0"))
    names.update(_compvis_resnet("mid_block.resnets.1", "middle_block.2"))
    # output_blocks 0, 1: level 1 (resnet + attention; 1 also upsamples), 2, 3: level 0
    for j in range(2):
        names.update(_compvis_resnet(f"up_blocks.0.resnets.{j}", f"output_blocks.{j}.0"))
        attentions[f"up_blocks.0.attentions.{j}"] = f"output_blocks.{j}.1"
        names.update(_compvis_resnet(f"up_blocks.1.resnets.{j}", f"output_blocks.{j + 2}.0"))
    names["up_blocks.0.upsamplers.0.conv"] = "output_blocks.1.2.conv"
    out = {}
    for key, value in sd.items():
        module, kind = key.rsplit(".", 1)
        if module in names:
            out[f"{prefix}{names[module]}.{kind}"] = value.clone()
    for d, c in attentions.items():
        width = sd[f"{d}.to_q.weight"].shape[0]
        heads = width // 16
        out[f"{prefix}{c}.norm.weight"] = sd[f"{d}.group_norm.weight"].clone()
        out[f"{prefix}{c}.norm.bias"] = sd[f"{d}.group_norm.bias"].clone()
        # qkv in the legacy order: for each head its q, then k, then v rows
        qkv_w = torch.stack([sd[f"{d}.to_{p}.weight"].reshape(heads, 16, width) for p in "qkv"], 1)
        qkv_b = torch.stack([sd[f"{d}.to_{p}.bias"].reshape(heads, 16) for p in "qkv"], 1)
        out[f"{prefix}{c}.qkv.weight"] = qkv_w.reshape(3 * width, width, 1).clone()
        out[f"{prefix}{c}.qkv.bias"] = qkv_b.reshape(3 * width).clone()
        out[f"{prefix}{c}.proj_out.weight"] = sd[f"{d}.to_out.0.weight"].reshape(width, width, 1).clone()
        out[f"{prefix}{c}.proj_out.bias"] = sd[f"{d}.to_out.0.bias"].clone()
    assert len(out) + 4 * len(attentions) == len(sd)  # 10 diffusers keys an attention, 6 CompVis ones
    return out


def vq_to_compvis(vq: VQModel) -> dict:
    sd = vq.state_dict()
    prefix = "first_stage_model."
    res = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
    names = {}
    for part in ("encoder", "decoder"):
        names[f"{part}.conv_in"] = f"{part}.conv_in"
        names[f"{part}.conv_out"] = f"{part}.conv_out"
        names[f"{part}.conv_norm_out"] = f"{part}.norm_out"
        for j, block in ((0, "block_1"), (1, "block_2")):
            names.update({f"{part}.mid_block.resnets.{j}.{a}": f"{part}.mid.{block}.{b}" for a, b in res.items()})
        names.update({f"{part}.mid_block.attentions.0.{a}": f"{part}.mid.attn_1.{b}" for a, b in
                      (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))})
    for level in range(3):
        names.update({f"encoder.down_blocks.{level}.resnets.0.{a}": f"encoder.down.{level}.block.0.{b}"
                      for a, b in res.items()})
        if level < 2:
            names[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
        for j in range(2):  # diffusers' up block i is CompVis' up[2 - i]
            names.update({f"decoder.up_blocks.{level}.resnets.{j}.{a}": f"decoder.up.{2 - level}.block.{j}.{b}"
                          for a, b in res.items()})
        if level < 2:
            names[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = f"decoder.up.{2 - level}.upsample.conv"
    for name in ("quant_conv", "post_quant_conv", "quantize.embedding"):
        names[name] = name
    out = {}
    for key, value in sd.items():
        module, kind = key.rsplit(".", 1)
        new = f"{prefix}{names[module]}.{kind}"
        if ".mid.attn_1." in new and value.ndim == 2:  # 1x1 convolutions there
            value = value[:, :, None, None]
        out[new] = value.clone()
    return out


@pytest.fixture(scope="module")
def tiny():
    return tiny_networks()


@pytest.fixture
def ldsr_folder(tmp_path, tiny):
    folder = tmp_path / "models" / "LDSR"
    folder.mkdir(parents=True)
    unet, vq = tiny
    state = {**unet_to_compvis(unet), **vq_to_compvis(vq)}
    torch.save({"state_dict": state, "global_step": 1}, folder / "model.ckpt")
    (folder / "project.yaml").write_text(TINY_YAML, encoding="utf-8")
    return folder


def picture(width=128, height=128, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)


def library(tmp_path: Path, folder: Path) -> UpscalerLibrary:
    lib = UpscalerLibrary([tmp_path / "models" / "ESRGAN"], models_dir=tmp_path / "models", ldsr_folder=folder)
    lib.options = lambda: {"ldsr_steps": 2, "ldsr_cached": False}
    lib.ldsr_seed = 7
    return lib


class SeededDDIM(DDIMScheduler):
    """The pipeline passes no generator to the scheduler's step (its eta noise would come from
    torch's global generator): here it comes from the pipeline's generator, after the start noise."""

    noise_generator = None

    def step(self, model_output, timestep, sample, eta=0.0, **kwargs):  # eta named: the pipeline looks
        return super().step(model_output, timestep, sample, eta=eta, generator=self.noise_generator, **kwargs)


def test_engine_ldsr_matches_diffusers_pipeline(ldsr_folder, tiny):
    unet, vq = tiny
    image = picture()
    steps, seed = 4, 42
    engine_out = ldsr.Ldsr.from_folder(ldsr_folder).upscale(image, 4, steps, seed=seed)
    assert engine_out.size == (512, 512)

    scheduler = SeededDDIM(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0155,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, timestep_spacing="leading")
    pipe = LDMSuperResolutionPipeline(vqvae=vq, unet=unet, scheduler=scheduler)
    low = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    generator = torch.Generator("cpu").manual_seed(seed)
    scheduler.noise_generator = generator  # the start noise, then each step's, from one generator
    reference = pipe(low, num_inference_steps=steps, eta=1.0, generator=generator, output_type="np").images[0]
    ours = np.asarray(engine_out, dtype=np.float32)
    # the pipeline rounds to 8 bits, the ecosystem truncates: at most one apart
    assert np.abs(ours - reference * 255).max() <= 1.0 + 1e-3
    assert ours.std() > 5  # a picture, not a flat colour


def test_timesteps_follow_the_ecosystem():
    assert ldsr.ddim_timesteps(100)[:3] == [1, 11, 21] and ldsr.ddim_timesteps(100)[-1] == 991
    assert len(ldsr.ddim_timesteps(30)) == 31  # 1000 // 30 = 33 apart, as CompVis' "uniform"
    assert ldsr.ddim_timesteps(1) == [1]


def test_patches_blend_back_to_the_whole():
    latent = torch.randn(1, 3, 256, 192)
    whole = ldsr._patched(lambda where: latent[:, :, where[0], where[1]] * 2, 256, 192, (128, 128), (64, 64), 1)
    assert torch.allclose(whole, latent * 2, atol=1e-5)
    weights = ldsr.patch_weights(128, 128)
    assert weights.min() == pytest.approx(0.01) and weights.max() == pytest.approx(0.5, abs=0.01)


def test_listed_when_the_file_is_there(tmp_path, ldsr_folder):
    lib = library(tmp_path, ldsr_folder)
    assert "LDSR" in lib.names()
    assert lib.canonical("LDSR") == "LDSR"
    info = next(item for item in lib.describe() if item.name == "LDSR")
    assert info.scale == 4 and info.path == ldsr_folder / "model.ckpt"
    lib.refuse_unsupported("LDSR")  # no error


def test_missing_files_give_a_clear_message(tmp_path):
    folder = tmp_path / "elsewhere" / "LDSR"
    lib = UpscalerLibrary([tmp_path / "models" / "ESRGAN"], models_dir=tmp_path / "models", ldsr_folder=folder)
    assert "LDSR" not in lib.names() and lib.canonical("LDSR") is None
    with pytest.raises(RequestError, match=r"model\.ckpt.*project\.yaml.*elsewhere"):
        lib.refuse_unsupported("LDSR")


class Boom:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_code_carrying_pickle_is_refused(tmp_path, capsys):
    folder = tmp_path / "LDSR"
    folder.mkdir()
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Boom()}, folder / "model.ckpt")
    with pytest.raises(RequestError, match=r"refused: it would need the Python object (builtins\.)?print\b"):
        ldsr.Ldsr.from_folder(folder)
    assert "code ran" not in capsys.readouterr().out


def test_an_old_lightning_checkpoint_is_read(tmp_path, monkeypatch, tiny):
    """Old training checkpoints key their 'callbacks' by Lightning's ModelCheckpoint class: that
    one name is resolved to an inert stand-in (Lightning itself is neither needed nor run)."""
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.setitem(sys.modules, name, module if name == module.__name__ else types.ModuleType(name))
    folder = tmp_path / "LDSR"
    folder.mkdir()
    unet, vq = tiny
    torch.save({"state_dict": {**unet_to_compvis(unet), **vq_to_compvis(vq)},
                "callbacks": {ModelCheckpoint: {"best_model_score": 0.5}}}, folder / "model.ckpt")
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.delitem(sys.modules, name)
    (folder / "project.yaml").write_text(TINY_YAML, encoding="utf-8")
    assert ldsr.Ldsr.from_folder(folder).config.model_channels == 32


def test_safetensors_is_accepted_without_yaml(tmp_path, tiny):
    from safetensors.torch import save_file

    folder = tmp_path / "LDSR"
    folder.mkdir()
    unet, vq = tiny
    state = {key: value.contiguous() for key, value in {**unet_to_compvis(unet), **vq_to_compvis(vq)}.items()}
    save_file(state, str(folder / "model.safetensors"))
    # without project.yaml the published (big) numbers are assumed: this tiny file does not fit them
    with pytest.raises(RequestError, match="does not match"):
        ldsr.Ldsr.from_folder(folder)
    (folder / "project.yaml").write_text(TINY_YAML, encoding="utf-8")
    assert ldsr.Ldsr.from_folder(folder).config.model_channels == 32


def test_extras_with_ldsr_scales_to_the_size_asked(tmp_path, ldsr_folder):
    lib = library(tmp_path, ldsr_folder)
    source = picture(40, 30)
    result = upscale(ExtrasRequest(source, upscaler="LDSR", scale=2), models=lib)
    assert result.image.size == (80, 60)
    tiled = lib.upscale(picture(200, 72), "LDSR", 400, 144)  # a padded width of 256: 3 patches
    assert tiled.size == (400, 144)


def test_interrupt_stops_sampling(tmp_path, ldsr_folder):
    lib = library(tmp_path, ldsr_folder)
    lib.should_stop = lambda: True
    result = lib.upscale(picture(32, 32), "LDSR", 64, 64)
    assert result.size == (64, 64)
