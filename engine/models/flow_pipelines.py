"""FLUX.1 and SD 3.x checkpoints turned into diffusers pipelines (FluxPipeline, FluxFillPipeline
for FLUX.1 Fill, StableDiffusion3Pipeline), with no network.

Every layout users download loads here: all-in-one single files; transformer-only files (original
keys, `.safetensors` or quantised `.gguf`) with the missing text encoders and VAE taken from the
files the modules choice picked (engine/models/text_encoders.py); fp8 e4m3fn weights, upcast to the
compute dtype as they load; and diffusers folders. The parts are built one by one from the family's
config folder (model_configs/<config_name>, or the tests' tiny one), which also gives the
tokenizers and the flow-matching scheduler, so nothing is fetched from the Hub:

* FLUX transformer: flow_loading.load_flux_transformer (BFL keys renamed at the file's own
  width); GGUF: the same renaming over diffusers' GGUF tensors, then diffusers' GGUF support;
* SD 3.x transformer and every VAE: diffusers' from_single_file with the local config;
* CLIP-L / CLIP-G / T5: built from their config and assigned the file's tensors (flow_loading).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from engine.devices import DeviceConfig
from engine.errors import CheckpointError
from engine.families import FlowModelFile, ModelFamily, family_of
from engine.families.files import T5, VAE, VAE_DECODER_IN
from engine.families.flux import FLUX
from engine.models.flow_loading import load_clip_encoder, load_flux_transformer, load_t5_encoder
from engine.models.loading import LoadedPipeline, flow_model_of, read_shapes
from engine.models.prediction import FLOW, ModelPrediction
from engine.models.registry import CheckpointInfo

log = logging.getLogger(__name__)

def pipeline_class(flow_model: FlowModelFile):
    """The diffusers pipeline class of a model, as its family names it."""
    return family_of(flow_model.family).pipeline_class(flow_model)


def config_folder(flow_model: FlowModelFile, config_root: Path, name: str) -> Path:
    """The model's config folder; variants with none kept are refused here, by name."""
    if not flow_model.supported:
        raise flow_model.refusal(name)
    folder = Path(config_root) / flow_model.config_name
    if not (folder / "transformer" / "config.json").is_file():
        raise CheckpointError(f"Missing config folder {folder} for {flow_model.variant}", "checkpoint")
    return folder


def clip_widths(config_dir: Path, family: str) -> dict[str, int]:
    """The hidden width of each CLIP text encoder the config folder describes (tells a CLIP file
    of a width other than the real ones apart: CLIP-L or CLIP-G)."""
    widths = {}
    for part, component in family_of(family).text_encoder_components.items():
        if part != T5:
            config = json.loads((config_dir / component / "config.json").read_text(encoding="utf-8"))
            widths[part] = int(config.get("hidden_size", 0))
    return widths


def resolve_flow_modules(info: CheckpointInfo, library, config_root: Path, choice,
                         allow_unsafe: bool = False) -> dict[str, Path]:
    """{part: file} a modules choice gives checkpoint `info` from `library` (a
    TextEncoderLibrary): the parts it lacks, picked automatically when the choice is empty, and
    only the parts its family uses. {} for a diffusers folder or a checkpoint of another family."""
    flow_model = flow_model_of(info, allow_unsafe)
    if flow_model is None or flow_model.folder:
        return {}
    config_dir = config_folder(flow_model, config_root, info.name)
    library.refresh()   # files copied in since the last look count
    parts = library.resolve_modules(choice, flow_model.missing_parts, clip_widths(config_dir, flow_model.family))
    used = (*family_of(flow_model.family).text_encoder_components, VAE)
    return {part: path for part, path in parts.items() if part in used}


def load_flow_checkpoint(info: CheckpointInfo, device: DeviceConfig, config_root: Path,
                         modules: Mapping[str, Path] | tuple = ()) -> LoadedPipeline:
    """A FluxPipeline (FluxFillPipeline for Fill) or StableDiffusion3Pipeline for `info`, on
    `device`. `modules`: {part: file} (CLIP_L, CLIP_G, T5, VAE; from
    TextEncoderLibrary.resolve_modules) filling the parts the checkpoint lacks, or replacing those
    it has."""
    flow_model = flow_model_of(info)
    if flow_model is None:
        raise CheckpointError(f"'{info.name}' is not a FLUX.1 or SD 3.x model", "checkpoint")
    if info.kind == "diffusers":
        return _load_folder(info, flow_model, device)
    config_dir = config_folder(flow_model, config_root, info.name)
    parts = dict(modules)
    lacking = [part for part in flow_model.missing_parts if part not in parts]
    if lacking:
        raise CheckpointError(f"'{info.name}' is {flow_model.describe()}: pick "
                              f"{', '.join(lacking)} in the modules choice.", "modules")
    family, path = family_of(flow_model.family), Path(info.path)
    try:
        components = {"transformer": _transformer(path, info.kind, family, config_dir, device.dtype)}
        for part, component in family.text_encoder_components.items():
            components[component] = _text_encoder(part, family, parts.get(part, path), config_dir / component,
                                                  device.dtype)
        components["vae"] = _vae(parts.get(VAE, path), config_dir, device.vae)
        components.update(_tokenizers(config_dir, family.name))
        components["scheduler"] = _scheduler(config_dir)
        pipe = pipeline_class(flow_model)(**components)
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"Could not load '{info.name}' as {flow_model.variant}: "
                              f"{_short(error)}", "checkpoint") from error
    _move(pipe, device)
    source = f"{flow_model.variant} ({'GGUF ' if info.kind == 'gguf' else ''}single file)"
    log.info("%s: %s, modules %s", path.name, flow_model.variant, {p: f.name for p, f in parts.items()} or "none")
    return LoadedPipeline(pipe, family.name, config_dir, ModelPrediction(FLOW, source=source))


def _transformer(path: Path, kind: str, family: ModelFamily, config_dir: Path, dtype: torch.dtype):
    """The family's transformer class from the file. Quantised GGUF weights stay quantised
    (dequantised layer by layer as they compute, in `dtype`); fp8 ones are upcast to `dtype`."""
    import diffusers

    quantization = {"quantization_config": diffusers.GGUFQuantizationConfig(compute_dtype=dtype)} if kind == "gguf" else {}
    if family is FLUX:
        # diffusers' own FLUX converter assumes the real widths; ours reads them from the tensors
        # and splits only whole rows, which quantised blocks keep.
        if not quantization:
            return load_flux_transformer(path, config_dir / "transformer", dtype=dtype, keep_fp8=False)
        from diffusers.models.model_loading_utils import load_gguf_checkpoint

        from engine.families.flux_keys import bfl_to_diffusers

        renamed = bfl_to_diffusers(load_gguf_checkpoint(str(path), return_tensors=True))
        return diffusers.FluxTransformer2DModel.from_single_file(
            renamed, config=str(config_dir / "transformer"), local_files_only=True, dtype=dtype, **quantization)
    # torch_dtype casts every tensor, fp8 matrices included (the fp8 values, upcast).
    return getattr(diffusers, family.transformer_class).from_single_file(
        str(path), config=str(config_dir), subfolder="transformer", local_files_only=True, dtype=dtype,
        **quantization)


def _text_encoder(part: str, family: ModelFamily, source: Path, config: Path, dtype: torch.dtype):
    if part == T5:
        return load_t5_encoder(source, config, dtype=dtype)
    return load_clip_encoder(source, config, part, dtype=dtype,
                             identity_projection=part in family.identity_projection_parts)


def _vae(source: Path, config_dir: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    shapes = read_shapes(Path(source), allow_unsafe=False)
    prefixed = [key for key in shapes if key.endswith(VAE_DECODER_IN)]
    channels = shapes[prefixed[0]][1] if prefixed else 0
    if channels != 16:
        what = "no VAE" if not prefixed else f"a {channels}-channel VAE (SD 1.x / 2.x / SDXL)"
        raise CheckpointError(f"'{Path(source).name}' holds {what}; FLUX.1 and SD 3 models need a "
                              "16-channel VAE (ae.safetensors).", "modules")
    return AutoencoderKL.from_single_file(str(source), config=str(config_dir), subfolder="vae",
                                          local_files_only=True, dtype=dtype)


def _tokenizers(config_dir: Path, family: str) -> dict:
    import transformers

    found = {}
    for name, class_name in family_of(family).tokenizers.items():
        found[name] = getattr(transformers, class_name).from_pretrained(str(config_dir / name), local_files_only=True)
    return found


def _scheduler(config_dir: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(str(config_dir), subfolder="scheduler",
                                                           local_files_only=True)


def _load_folder(info: CheckpointInfo, flow_model: FlowModelFile, device: DeviceConfig) -> LoadedPipeline:
    if not flow_model.supported:
        raise flow_model.refusal(info.name)
    try:
        pipe = pipeline_class(flow_model).from_pretrained(info.path, dtype=device.dtype, local_files_only=True)
    except Exception as error:
        raise CheckpointError(f"Could not load diffusers folder '{info.name}' as {flow_model.variant}: "
                              f"{_short(error)}", "checkpoint") from error
    _move(pipe, device)
    return LoadedPipeline(pipe, flow_model.family, None,
                          ModelPrediction(FLOW, source=f"{flow_model.variant} (diffusers folder)"))


def _move(pipe, device: DeviceConfig) -> None:
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        if getattr(module, "is_quantized", False) or getattr(module, "hf_quantizer", None) is not None:
            # GGUF tensors keep their storage type; only where they live changes.
            module.to(device.device)
        else:
            torch.nn.Module.to(module, device.device, device.vae if name == "vae" else device.dtype)


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:limit]
