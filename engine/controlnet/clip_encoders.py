"""The CLIP image encoders that IP-Adapter and T2I style adapter units read pictures with: where
they are kept (models/ControlNet/annotators/clip_vision or models/clip_vision), what they are
called there (the extension's and ComfyUI's names), and loading one from a transformers folder or
a single file in transformers' key layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from PIL import Image

from engine.errors import RequestError

CLIP_H, CLIP_G = "clip_h", "clip_g"
CLIP_L = "clip_vitl"   # OpenAI's ViT-L/14: the T2I style adapter's encoder (style_adapter.py)
ENCODER_LABELS = {CLIP_H: "CLIP ViT-H/14", CLIP_G: "CLIP ViT-bigG/14", CLIP_L: "CLIP ViT-L/14"}
# What each image encoder is called on disk, by the extension and by ComfyUI (any case).
ENCODER_NAMES = {
    CLIP_H: ("clip_h", "CLIP-ViT-H-14-laion2B-s32B-b79K", "clip_vision_h", "ViT-H-14"),
    CLIP_G: ("clip_g", "CLIP-ViT-bigG-14-laion2B-39B-b160k", "clip_vision_g", "ViT-bigG-14"),
    CLIP_L: ("clip_vitl", "clip-vit-large-patch14", "clip_vision_l", "clip_l", "ViT-L-14"),
}
# OpenAI's CLIP uses the quick GELU; the OpenCLIP (LAION) encoders the exact one.
ENCODER_ACTIVATIONS = {CLIP_L: "quick_gelu"}
ENCODER_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt")
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def encoder_folders(controlnet_folder: Path) -> list[Path]:
    folder = Path(controlnet_folder)
    return [folder / "annotators" / "clip_vision", folder.parent / "clip_vision"]


def find_encoder(controlnet_folder: Path, encoder: str) -> Path:
    """The image encoder's folder or file; RequestError naming the files and folders looked for."""
    names = {n.lower() for n in ENCODER_NAMES[encoder]}
    for folder in encoder_folders(controlnet_folder):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            stem = path.name if path.is_dir() else path.stem
            if stem.lower() not in names:
                continue
            if path.is_dir() and (path / "config.json").is_file() and \
                    any((path / w).is_file() for w in _FOLDER_WEIGHTS):
                return path
            if path.is_file() and path.suffix.lower() in ENCODER_SUFFIXES:
                return path
    wanted = ENCODER_NAMES[encoder][0]
    raise RequestError(
        f"The {ENCODER_LABELS[encoder]} image encoder is missing: put {wanted}.safetensors (or {wanted}.pth, "
        f"{ENCODER_NAMES[encoder][1]}.safetensors, or a transformers CLIPVisionModelWithProjection folder "
        f"named {wanted}) into {' or '.join(str(f) for f in encoder_folders(controlnet_folder))}", "module")


def _vision_config(shapes: dict[str, tuple[int, ...]], name: str) -> dict:
    """A CLIPVisionConfig for transformers-named vision tensors (heads: 64 wide, as every
    released ViT is)."""
    try:
        hidden, _, patch, _ = shapes["vision_model.embeddings.patch_embedding.weight"]
        positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
        layers = 1 + max(int(m.group(1)) for k in shapes
                         if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k)))
        intermediate = shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]
        projection = shapes["visual_projection.weight"][0]
    except (KeyError, ValueError) as error:
        raise RequestError(f"Image encoder '{name}' is not a CLIP vision model in transformers' layout "
                           f"(vision_model.* and visual_projection.weight): missing {error}", "module") from error
    side = round((positions - 1) ** 0.5) * patch
    return {"hidden_size": hidden, "patch_size": patch, "image_size": side, "num_hidden_layers": layers,
            "intermediate_size": intermediate, "projection_dim": projection,
            "num_attention_heads": max(1, hidden // 64), "hidden_act": "gelu"}


def load_encoder(path: Path, allow_unsafe: bool = False):
    """(CLIPVisionModelWithProjection in float32 on the CPU, its image processor) from a folder
    or a single file (a pickled one, like the extension's clip_h.pth, only with allow_unsafe)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    path = Path(path)
    if path.is_dir():
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True)
        except Exception as error:
            raise RequestError(f"Image encoder folder {path} cannot be loaded: {str(error)[:300]}",
                               "module") from error
    else:
        try:
            if path.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(path), device="cpu")
            elif not allow_unsafe:
                raise RequestError(f"Image encoder {path} is a pickled file; pickles are refused. Use a .safetensors "
                                   "version (or a transformers folder), or start with --allow-unsafe-checkpoints if "
                                   "you trust where the file came from.", "module")
            else:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except RequestError:
            raise
        except Exception as error:
            raise RequestError(f"Image encoder {path} cannot be read ({str(error)[:200]}); download it again",
                               "module") from error
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)
                 and k.startswith(("vision_model.", "visual_projection."))}
        config = _vision_config({k: tuple(v.shape) for k, v in state.items()}, path.name)
        kind = next((kind for kind, names in ENCODER_NAMES.items()
                     if path.stem.lower() in {name.lower() for name in names}), None)
        config["hidden_act"] = ENCODER_ACTIVATIONS.get(kind, config["hidden_act"])
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():  # a config saved beside the file wins over what shapes say
            config.update(json.loads(sidecar.read_text(encoding="utf-8")))
        with torch.device("meta"):
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
        state.pop("vision_model.embeddings.position_ids", None)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise RequestError(f"Image encoder {path} does not match a CLIP vision model: "
                               f"{str(error)[:300]}", "module") from error
        model.vision_model.embeddings.register_buffer(
            "position_ids", torch.arange(model.vision_model.embeddings.num_positions).expand((1, -1)), persistent=False)
    return model.float().eval(), image_processor(model.config.image_size)


def image_processor(size: int):
    """CLIP's preprocessing (shortest side to `size`, centre crop, CLIP's mean and std)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@torch.no_grad()
def image_features(encoder, processor, images: list[Image.Image], hidden_states: bool):
    """(positive, negative) features: one per picture, and one for the negative half."""
    pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt").pixel_values
    pixels = pixels.to(encoder.device, encoder.dtype)
    if hidden_states:
        cond = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        uncond = encoder(torch.zeros_like(pixels[:1]), output_hidden_states=True).hidden_states[-2]
    else:
        cond = encoder(pixels).image_embeds
        uncond = torch.zeros_like(cond[:1])
    return cond, uncond


def features_on(device, dtype, encoder, processor, images: list[Image.Image], hidden_states: bool):
    """image_features with the encoder moved to `device` for the call and back to the CPU after
    (it is kept in RAM for the next job, not beside the UNet in VRAM); the features on the CPU."""
    torch.nn.Module.to(encoder, device=device, dtype=dtype)
    try:
        cond, uncond = image_features(encoder, processor, images, hidden_states)
    finally:
        torch.nn.Module.to(encoder, device="cpu")
    return cond.cpu(), uncond.cpu()
