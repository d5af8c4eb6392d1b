"""Tiny GFPGAN / CodeFormer weight files with seeded weights, written the way the published
files are (a torch pickle holding {"params_ema": state dict})."""

from pathlib import Path

import torch

from engine.postprocess.face_models.codeformer import CodeFormer
from engine.postprocess.face_models.gfpgan import GFPGAN


def tiny_gfpgan(seed: int = 0) -> GFPGAN:
    """64 px, narrow, with the published files' options (separate styles per layer, SFT on half)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GFPGAN(unet=[8, 8, 8, 4, 4], decoder=[16, 16, 16, 8, 8], style_dim=16, mlp_layers=2)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(torch.randn_like(param) * 0.2)
            for buffer in model.buffers():
                buffer.copy_(torch.randn_like(buffer))
            # Start each modulation near 1, as trained StyleGAN2 layers are, so the output has contrast.
            for name, param in model.named_parameters():
                if name.endswith("modulation.bias"):
                    param.add_(1.0)
    return model.eval()


def write_gfpgan_file(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": tiny_gfpgan(seed).state_dict()}, path)
    return path


# 16 px, two fusion resolutions; widths are multiples of 32 because CodeFormer's norms use 32 groups.
TINY_CODEFORMER = dict(nf=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(4,), codebook_size=32,
                       code_dim=8, dim_embd=16, n_layers=1, connect_list=("8", "16"), img_size=16)


def tiny_codeformer(seed: int = 0) -> CodeFormer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CodeFormer(**TINY_CODEFORMER).eval()
        with torch.no_grad():  # spread the codebook and positions so lookups actually vary
            model.quantize.embedding.weight.normal_()
            model.position_emb.normal_()
    return model


def write_codeformer_file(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": tiny_codeformer(seed).state_dict()}, path)
    return path
