"""Loading the FLUX.1 transformer and the T5 encoder from the single files users download,
without diffusers' single-file converters:

* the FLUX transformer in Black Forest Labs' layout (bare, or under `model.diffusion_model.` in
  an all-in-one file) is renamed by engine/families/flux_keys.py at the width the file has, and
  loaded into a FluxTransformer2DModel built from a config folder (model_configs/flux-dev,
  flux-schnell or flux-fill for real files) with no weights allocated first (meta device, then
  the file's tensors assigned); fp8 e4m3fn matrices are kept as stored or upcast to the compute
  dtype;
* the T5 encoder: diffusers' single-file route does not re-tie `shared.weight` and
  `encoder.embed_tokens.weight` (the same matrix in T5EncoderModel), so a file carrying only one
  of them left the other unloaded; here the missing one is filled from the other and the two
  are tied again.

Tensors are read one at a time through safetensors' memory map, only those of the part asked for.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.errors import CheckpointError
from engine.families.flux_keys import BFL_PREFIX, bfl_to_diffusers, flux_widths

T5_PREFIX = "text_encoders.t5xxl.transformer."
T5_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def _read(path: Path, marker: str, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix` when the file has `prefix + marker`, else every tensor (a
    component file on its own), with the prefix removed."""
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}", "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            wanted = prefix if prefix + marker in keys else ""
            return {key[len(wanted):]: handle.get_tensor(key) for key in keys if key.startswith(wanted)}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read {path.name!r} as a safetensors file (it may be incomplete or "
                              f"corrupt: {error}). Download it again.", "checkpoint") from error


def _cast(tensor: torch.Tensor, dtype: torch.dtype, keep_fp8: bool) -> torch.Tensor:
    if not tensor.is_floating_point() or (keep_fp8 and tensor.dtype in FP8_DTYPES):
        return tensor
    return tensor.to(dtype)


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into a model built on the meta device, naming what does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{what} does not fit its config: missing {missing[:5]} ({len(missing)}), "
                              f"unexpected {unexpected[:5]} ({len(unexpected)}), other shapes {wrong[:5]}")
    model.load_state_dict(state, strict=True, assign=True)


def load_flux_transformer(path: Path, config_folder: Path, dtype: torch.dtype = torch.bfloat16,
                          keep_fp8: bool = False):
    """A FluxTransformer2DModel (eval mode) from a BFL-layout safetensors file, built from the
    config in `config_folder` (the transformer's own folder, with config.json). `keep_fp8`
    leaves fp8 matrices as stored (the caller upcasts per layer); otherwise every floating
    tensor becomes `dtype`."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    source = _read(Path(path), "img_in.weight", BFL_PREFIX)
    if "img_in.weight" not in source:
        raise CheckpointError(f"{Path(path).name!r} holds no FLUX.1 transformer in Black Forest Labs' layout "
                              f"(no 'img_in.weight', bare or under {BFL_PREFIX!r})")
    config = FluxTransformer2DModel.load_config(str(config_folder))
    hidden, _ = flux_widths(source)
    config_hidden = config["num_attention_heads"] * config["attention_head_dim"]
    if hidden != config_hidden:
        raise CheckpointError(f"{Path(path).name!r} is a FLUX transformer {hidden} channels wide, "
                              f"but its config {config_folder} describes {config_hidden}")
    # img_in's columns are what the transformer takes per 2x2 patch: 64 (latents), 384 for Fill
    # (+ masked picture and mask), 128 for Depth/Canny (+ control latents); only its rows are width.
    inputs, config_inputs = source["img_in.weight"].shape[1], config["in_channels"]
    if inputs != config_inputs:
        raise CheckpointError(f"{Path(path).name!r} is a FLUX transformer taking {inputs} input channels, "
                              f"but its config {config_folder} describes {config_inputs}")
    state = {key: _cast(value, dtype, keep_fp8) for key, value in bfl_to_diffusers(source).items()}
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    _assign(model, state, f"FLUX transformer {Path(path).name!r}")
    return model.eval()


def tie_t5_embeddings(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with both of T5's embedding names, the missing one taken from the other."""
    present = [key for key in T5_EMBEDDING_KEYS if key in state]
    if not present:
        raise CheckpointError(f"T5 encoder without a token embedding (neither of {T5_EMBEDDING_KEYS})")
    return {**{key: state[present[0]] for key in T5_EMBEDDING_KEYS}, **state}


def load_t5_encoder(path: Path, config_folder: Path, dtype: torch.dtype = torch.bfloat16):
    """A T5EncoderModel (eval mode) from a standalone T5 file (`t5xxl_fp16.safetensors`) or the
    `text_encoders.t5xxl.transformer.` part of an all-in-one file, with its embedding tied."""
    from accelerate import init_empty_weights
    from transformers import T5Config, T5EncoderModel

    source = _read(Path(path), "encoder.final_layer_norm.weight", T5_PREFIX)
    state = {key: _cast(value, dtype, keep_fp8=False) for key, value in tie_t5_embeddings(source).items()}
    with init_empty_weights():
        model = T5EncoderModel(T5Config.from_pretrained(str(config_folder)))
    _assign(model, state, f"T5 encoder {Path(path).name!r}")
    # assign=True gave each name its own Parameter; one matrix again, as the model is built.
    model.encoder.embed_tokens.weight = model.shared.weight
    return model.eval()


CLIP_PREFIXES = {"CLIP-L": "text_encoders.clip_l.transformer.", "CLIP-G": "text_encoders.clip_g.transformer."}
# Tensors some CLIP files carry that a text tower has no place for (the vision half of a full
# CLIP, its logit scale, position ids kept as a buffer).
_CLIP_EXTRAS = ("vision_model.", "visual_projection.", "logit_scale", "text_model.embeddings.position_ids",
                "embeddings.position_ids")


def load_clip_encoder(path: Path, config_folder: Path, part: str, dtype: torch.dtype = torch.bfloat16,
                      identity_projection: bool = False):
    """A CLIP text encoder (the class its config's `architectures` names: CLIPTextModel for FLUX,
    CLIPTextModelWithProjection for SD 3.x) from a standalone file (`text_model.*`, as
    clip_l.safetensors carries it) or the `text_encoders.clip_l|clip_g.transformer.` part of an
    all-in-one file. `identity_projection`: SD 3's CLIP-L is used unprojected, whatever the file
    holds (diffusers' single-file loader does the same)."""
    import transformers
    from accelerate import init_empty_weights

    source = _read(Path(path), "text_model.final_layer_norm.weight", CLIP_PREFIXES[part])
    config = transformers.CLIPTextConfig.from_pretrained(str(config_folder))
    class_name = (config.architectures or ["CLIPTextModel"])[0]
    with init_empty_weights():
        model = getattr(transformers, class_name)(config)
    wrapped = hasattr(model, "text_model")   # transformers 5 flattened CLIPTextModel, not ...WithProjection
    state = {}
    for key, value in source.items():
        if key.startswith(_CLIP_EXTRAS) or (key.startswith("text_projection.") and not hasattr(model, "text_projection")):
            continue
        bare = key.removeprefix("text_model.")
        name = bare if bare.startswith("text_projection.") or not wrapped else "text_model." + bare
        state[name] = _cast(value, dtype, keep_fp8=False)
    if identity_projection and hasattr(model, "text_projection"):
        state["text_projection.weight"] = torch.eye(config.hidden_size, dtype=dtype)
    _assign(model, state, f"{part} text encoder {Path(path).name!r}")
    return model.eval()
