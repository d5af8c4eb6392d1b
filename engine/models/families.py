"""Recognising the flow-matching model families (FLUX.1, Stable Diffusion 3.x) in the files users
download: single files in the original key layouts (all-in-one, or the transformer alone with
the text encoders and the VAE picked separately) and diffusers folders.

This is the start of the family seam: it names what a file is and what it lacks, exactly, so the
loader (engine/models/flow_pipelines.py) can take the missing parts from the files the user picked
beside it, and refuse the variants no config is kept for with a message that says so. Facts used (the key names the publishers' files carry):

* FLUX.1 transformer: `double_blocks.N.img_attn...` / `single_blocks.N...`, bare or under
  `model.diffusion_model.`; FLUX.1-dev (guidance-distilled) has `guidance_in`, schnell does not;
  `img_in` takes 64 channels (16 latent x 2x2), 384 for Fill (+ mask and masked image), 128 for
  the Depth / Canny models (+ the control image's latents).
* SD 3.x MMDiT: `joint_blocks.N.{x_block,context_block}...`, bare or under `model.diffusion_model.`;
  38 blocks for 3.5 Large (and Large Turbo), 24 for Medium; 3.5 Medium adds a second attention
  (`x_block.attn2`) to its first blocks, SD 3 Medium has none.
* Text encoders inside a single file: `text_encoders.clip_l.`, `text_encoders.clip_g.`,
  `text_encoders.t5xxl.`; the VAE: `vae.` or `first_stage_model.`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CheckpointError

FLUX, SD3 = "flux", "sd3"
FAMILY_NAMES = {FLUX: "FLUX.1", SD3: "Stable Diffusion 3"}
TRANSFORMER_PREFIXES = ("model.diffusion_model.", "")
FLUX_MARKER = "double_blocks.0.img_attn.qkv.weight"
SD3_MARKER = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
CHROMA_MARKER = "distilled_guidance_layer.in_proj.weight"
# FLUX.1 Fill's img_in per 2x2 patch: 64 noisy latents + 64 masked-picture latents + 256 mask.
FLUX_FILL_IN_CHANNELS = 384

CLIP_L, CLIP_G, T5 = "CLIP-L", "CLIP-G", "T5-XXL"
TEXT_ENCODER_PREFIXES = {CLIP_L: "text_encoders.clip_l.", CLIP_G: "text_encoders.clip_g.",
                         T5: "text_encoders.t5xxl."}
VAE_KEYS = ("vae.decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight")
# What each family's transformer needs beside it.
NEEDED_TEXT_ENCODERS = {FLUX: (CLIP_L, T5), SD3: (CLIP_L, CLIP_G, T5)}
CHROMA = "Chroma (FLUX.1-based)"   # FLUX.1-schnell pruned and retrained: T5 only, no CLIP
VAE_NAMES = {FLUX: "the FLUX VAE (ae.safetensors)", SD3: "the SD3 VAE"}
VAE = "VAE"   # the part a missing VAE is, beside the text encoders' names


@dataclass(frozen=True)
class FlowModelFile:
    """What a FLUX or SD 3.x checkpoint holds."""

    family: str                           # FLUX | SD3
    variant: str                          # "FLUX.1-dev", "SD 3.5 Large", ...
    config_name: str | None               # its folder under model_configs/, None: none kept yet
    text_encoders: tuple[str, ...] = ()   # the text encoders the file includes
    has_vae: bool = False
    folder: bool = False                  # a diffusers folder (every part in it)

    @property
    def missing(self) -> tuple[str, ...]:
        if self.folder:
            return ()
        needed = (T5,) if self.variant == CHROMA else NEEDED_TEXT_ENCODERS[self.family]
        parts = tuple(name for name in needed if name not in self.text_encoders)
        return parts + (() if self.has_vae else (VAE_NAMES[self.family],))

    @property
    def missing_parts(self) -> tuple[str, ...]:
        """What `missing` names, as parts: CLIP_L, CLIP_G, T5 and VAE."""
        return tuple(VAE if name == VAE_NAMES[self.family] else name for name in self.missing)

    @property
    def supported(self) -> bool:
        """Whether this variant can be loaded: a config folder is kept for it."""
        return self.config_name is not None

    @property
    def _a_variant(self) -> str:
        # "an SD 3.5 Large", "a FLUX.1-dev": SD is read letter by letter.
        return ("an " if self.variant.startswith("SD") else "a ") + self.variant

    def describe(self) -> str:
        if self.folder:
            return f"{self._a_variant} diffusers folder"
        encoders = [f"the {name} text encoder" for name in self.text_encoders]
        if not self.missing:
            return f"{self._a_variant} all-in-one checkpoint ({_join(['transformer', *encoders, 'the VAE'])})"
        needs = [f"a {name} text encoder" if name in TEXT_ENCODER_PREFIXES else name for name in self.missing]
        if not self.text_encoders and not self.has_vae:
            return f"{self._a_variant} transformer-only file: it needs {_join(needs)} picked beside it"
        have = encoders + (["the VAE"] if self.has_vae else [])
        return f"{self._a_variant} single file with {_join(have)}; it needs {_join(needs)} picked beside it"

    def refusal(self, name: str) -> CheckpointError:
        """Why a variant with no config kept (FLUX.1 Depth/Canny, Kontext, Chroma) does not load."""
        return CheckpointError(
            f"'{name}' is {self.describe()}. {self.variant} models are not supported yet in this version "
            "of SD Studio (FLUX.1-dev, FLUX.1-schnell, FLUX.1 Fill, SD 3 Medium, SD 3.5 Large and SD 3.5 Medium "
            "are); the model stays in the checkpoint list and the current model stays loaded.", "checkpoint")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def read_gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape (in torch's order) of every tensor in a GGUF file, from its header: the
    quantised FLUX.1 / SD 3.x transformers keep the original key names, so recognise_file reads
    them as it reads a .safetensors file's."""
    try:
        import gguf   # needed only for GGUF files (diffusers' GGUF loading needs it too)
    except ImportError as error:
        raise CheckpointError(f"'{path.name}' is a GGUF file; reading it needs the gguf package "
                              "(pip install gguf).", "checkpoint") from error
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # gguf raises ValueError and struct errors for a bad header
        raise CheckpointError(f"'{path.name}' is not a valid GGUF file (it may be incomplete or corrupt: "
                              f"{str(error)[:200]}). Download it again.", "checkpoint") from error
    # GGUF lists dimensions innermost first (ggml's order): reversed, they are torch's.
    return {tensor.name: tuple(int(n) for n in reversed(tensor.shape.tolist())) for tensor in reader.tensors}


def _transformer_prefix(shapes: dict, marker: str) -> str | None:
    return next((prefix for prefix in TRANSFORMER_PREFIXES if prefix + marker in shapes), None)


def recognise_file(shapes: dict[str, tuple[int, ...]]) -> FlowModelFile | None:
    """The FLUX.1 or SD 3.x model a single file holds (read from its keys and a few shapes), or None."""
    text_encoders = tuple(name for name, prefix in TEXT_ENCODER_PREFIXES.items()
                          if any(key.startswith(prefix) for key in shapes))
    has_vae = any(key in shapes for key in VAE_KEYS)
    prefix = _transformer_prefix(shapes, FLUX_MARKER)
    if prefix is not None:
        return FlowModelFile(FLUX, *_flux_variant(shapes, prefix), text_encoders, has_vae)
    prefix = _transformer_prefix(shapes, SD3_MARKER)
    if prefix is not None:
        return FlowModelFile(SD3, *_sd3_variant(shapes, prefix), text_encoders, has_vae)
    return None


def _flux_variant(shapes: dict, prefix: str) -> tuple[str, str | None]:
    if prefix + CHROMA_MARKER in shapes:
        return CHROMA, None
    img_in = shapes.get(prefix + "img_in.weight", (0, 64))
    if prefix + "guidance_in.in_layer.weight" not in shapes:
        return "FLUX.1-schnell", "flux-schnell"
    if img_in[1] == FLUX_FILL_IN_CHANNELS:
        return "FLUX.1 Fill", "flux-fill"
    if img_in[1] == 128:
        return "FLUX.1 Depth/Canny", None
    return "FLUX.1-dev", "flux-dev"


def _sd3_variant(shapes: dict, prefix: str) -> tuple[str, str | None]:
    start = prefix + "joint_blocks."
    blocks = 1 + max(int(key[len(start):].split(".", 1)[0]) for key in shapes if key.startswith(start))
    if blocks == 38:
        return "SD 3.5 Large", "sd3.5-large"
    dual = prefix + "joint_blocks.0.x_block.attn2.qkv.weight" in shapes
    if blocks == 24 and dual:
        return "SD 3.5 Medium", "sd3.5-medium"
    if blocks == 24:
        return "SD 3 Medium", "sd3-medium"
    return f"SD 3.x ({blocks}-block)", None


def recognise_folder(folder: Path) -> FlowModelFile | None:
    """The FLUX.1 or SD 3.x model a diffusers folder holds, told by its model_index.json's pipeline
    class (and its transformer's config), or None for any other folder."""
    try:
        class_name = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError):
        return None
    if class_name.startswith("Flux"):
        family = FLUX
    elif class_name.startswith("StableDiffusion3"):
        family = SD3
    else:
        return None
    try:
        config = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if family == FLUX:
        if "Fill" in class_name or config.get("in_channels") == FLUX_FILL_IN_CHANNELS:
            variant, config_name = "FLUX.1 Fill", "flux-fill"
        elif "Kontext" in class_name:   # the same transformer as dev: only the pipeline class tells
            variant, config_name = "FLUX.1 Kontext", None
        elif config.get("guidance_embeds") is False:
            variant, config_name = "FLUX.1-schnell", "flux-schnell"
        else:
            variant, config_name = "FLUX.1-dev", "flux-dev"
    elif config.get("num_layers") == 38:
        variant, config_name = "SD 3.5 Large", "sd3.5-large"
    elif config.get("dual_attention_layers"):
        variant, config_name = "SD 3.5 Medium", "sd3.5-medium"
    else:
        variant, config_name = "SD 3 Medium", "sd3-medium"
    return FlowModelFile(family, variant, config_name, folder=True)


# Parts of a FLUX / SD 3 setup that users put beside their checkpoints: key -> what it is, by the
# width of the tensor (a CLIP text tower's q projection: 768 for CLIP-L, 1280 for CLIP-G).
T5_ENCODER_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
CLIP_Q_KEY = "text_model.encoder.layers.0.self_attn.q_proj.weight"
VAE_DECODER_IN = "decoder.conv_in.weight"


def recognise_component(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """A text encoder or VAE file on its own (put in the checkpoints folder by mistake), named, or None."""
    if T5_ENCODER_KEY in shapes:
        return f"a {T5} text encoder"
    width = shapes.get(CLIP_Q_KEY, (0,))[0]
    if width in (768, 1280):
        return f"a {CLIP_L if width == 768 else CLIP_G} text encoder"
    if width:   # a CLIP text tower of another width (a fine-tune's or a test's)
        return "a CLIP text encoder"
    latent_channels = shapes.get(VAE_DECODER_IN, (0, 0))[1]
    if latent_channels == 16:
        return "a 16-channel VAE (FLUX.1 / SD 3)"
    if latent_channels == 4:
        return "a VAE (SD 1.x / 2.x / SDXL)"
    return None


def component_refusal(name: str, component: str) -> CheckpointError:
    if component.startswith("a VAE"):
        return CheckpointError(f"'{name}' is {component}, not a checkpoint: it belongs in models/VAE, "
                               "where the SD VAE setting picks it.", "checkpoint")
    folder = "models/VAE" if "VAE" in component else "models/text_encoder"
    return CheckpointError(
        f"'{name}' is {component}, not a checkpoint: it belongs in {folder}, to be picked beside a "
        "FLUX.1 or SD 3 checkpoint (the modules choice).", "checkpoint")
