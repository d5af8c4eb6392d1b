"""Turning a checkpoint on disk into a diffusers pipeline, with no network.

Single-file checkpoints (the original LDM key layout users download) are matched to a model family
by their keys, then loaded with `from_single_file(config=<the family's config folder in the repo>)`.
Pickled checkpoints can run code when unpickled: they are refused unless the user opts in, and
even then only read with `weights_only=True`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from engine.devices import DeviceConfig
from engine.errors import CheckpointError
from engine.families import FAMILIES, FlowModelFile, recognise_flow_file, recognise_flow_folder
from engine.families.files import component_refusal, recognise_component
from engine.families.stable_diffusion import LABELS as FAMILY_LABELS
from engine.families.stable_diffusion import UNET_IN, CheckpointLayout, family_of_pipeline, recognise_layout
from engine.models import prediction as predictions
from engine.models.prediction import ModelPrediction
from engine.models.registry import CheckpointInfo

log = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).parent / "model_configs"

@dataclass
class LoadedPipeline:
    pipe: object
    family: str
    config_dir: Path | None
    # What the file says the UNet predicts (engine/models/prediction.py).
    prediction: ModelPrediction = ModelPrediction()


def read_shapes(path: Path, allow_unsafe: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in a checkpoint file, reading as little as possible."""
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}", "checkpoint")
    if path.suffix.lower() == ".gguf":
        return read_gguf_shapes(path)
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as error:  # safetensors raises its own error types for a bad header
            raise CheckpointError(
                f"'{path.name}' is not a valid .safetensors file (it may be incomplete or corrupt: "
                f"{_short(error)}). Download it again.", "checkpoint") from error
    state = read_pickled_state_dict(path, allow_unsafe)
    return {key: tuple(value.shape) for key, value in state.items() if hasattr(value, "shape")}


def read_gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape (in torch's order) of every tensor in a GGUF file, from its header: the
    quantised FLUX.1 / SD 3.x transformers keep the original key names, so their families
    recognise them as they do a .safetensors file's."""
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


def read_pickled_state_dict(path: Path, allow_unsafe: bool) -> dict:
    if not allow_unsafe:
        raise CheckpointError(
            f"'{path.name}' is a pickled checkpoint ({path.suffix}); pickles can run code when "
            "opened, so they are refused. Use the .safetensors version of this model, or start "
            "with --allow-unsafe-checkpoints if you trust where the file came from.", "checkpoint")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"'{path.name}' could not be read as plain weights ({_short(error)}). It may be "
            "corrupt, or hold Python objects that a weights-only load refuses to run.",
            "checkpoint") from error
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path.name}' does not hold a state dict", "checkpoint")
    return state


def detect_layout(shapes: dict[str, tuple[int, ...]], name: str) -> CheckpointLayout | FlowModelFile:
    """What a single file is, as its family recognises it (engine/families): an SD 1.x / 2.x /
    SDXL layout, or a FLUX.1 / SD 3.x model (a FlowModelFile, loaded by
    engine/models/flow_pipelines.py; variants with no config kept are refused here, by name)."""
    if UNET_IN in shapes:
        return recognise_layout(shapes, name)
    flow_model = recognise_flow_file(shapes)
    if flow_model is not None:
        if not flow_model.supported:
            raise flow_model.refusal(name)
        return flow_model
    component = recognise_component(shapes)
    if component is not None:
        raise component_refusal(name, component)
    raise CheckpointError(
        f"'{name}' is not a Stable Diffusion checkpoint in the original single-file layout "
        "(no UNet weights under model.diffusion_model). LoRA, VAE and embedding files go in "
        "their own folders (models/Lora, models/VAE, models/embeddings).", "checkpoint")


def file_prediction(path: Path, family: str, pipe, allow_unsafe: bool) -> ModelPrediction:
    """What the file's marker keys, else its .yaml sidecar, say; an SD 2.x file with neither is
    asked (its UNet probed), others are epsilon models."""
    found = None
    if path.suffix.lower() == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            found = predictions.from_file_keys(set(handle.keys()), handle.get_tensor)
    else:
        state = read_pickled_state_dict(path, allow_unsafe)
        found = predictions.from_file_keys(set(state), state.__getitem__)
    found = found or predictions.from_sidecar(path)
    if found is None and family == "sd2" and predicts_v(pipe.unet):
        found = ModelPrediction(predictions.V_PREDICTION, source="UNet probed")
    return found or ModelPrediction()


@torch.no_grad()
def predicts_v(unet) -> bool:
    """Tell a v-prediction UNet from an epsilon one by its answer on a flat input at the last step.

    An epsilon model returns roughly its input there (the input is nearly all noise); a
    v-prediction model returns something strongly negative.
    """
    param = next(unet.parameters())
    sample = torch.full((1, 4, 8, 8), 0.5, device=param.device, dtype=param.dtype)
    context = torch.full((1, 77, unet.config.cross_attention_dim), 0.5, device=param.device,
                         dtype=param.dtype)
    timestep = torch.tensor([999], device=param.device)
    out = unet(sample, timestep, encoder_hidden_states=context).sample
    return (out.float() - sample.float()).mean().item() < -1


# safetensors' names for the floating point types a checkpoint stores.
_STORED_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def stored_dtype(path: Path) -> torch.dtype | None:
    """The one floating point type a .safetensors file stores its weights in (read from its
    header), or None: another kind of file, or several types (a half precision file with a
    float32 VAE, say), which must be converted straight to the device's type so nothing is
    rounded on the way."""
    if path.suffix.lower() != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as handle:
        found = {handle.get_slice(key).get_dtype() for key in handle.keys()}
    floats = {name for name in found if name.startswith(("F", "BF"))}  # F8_E4M3 and the like too
    return _STORED_FLOATS.get(floats.pop()) if len(floats) == 1 else None


def load_single_file(info: CheckpointInfo, device: DeviceConfig, config_root: Path,
                     allow_unsafe: bool) -> LoadedPipeline:
    """Load a checkpoint file. A .safetensors file is memory-mapped and read in the precision it
    is stored in, so on the CPU the weights stay the file's pages (no copy is made; pages are read
    when first used); the one conversion to the device's precision happens tensor by tensor as
    the pipeline moves to the device, so no second whole copy of the model is ever in RAM."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(info.path)
    layout = detect_layout(read_shapes(path, allow_unsafe), info.name)
    if isinstance(layout, FlowModelFile):   # only .safetensors / .gguf ones are routed to flow loading
        raise CheckpointError(f"'{info.name}' is {layout.describe()}, in a pickled file: use its .safetensors "
                              "or .gguf version.", "checkpoint")
    # Converting while loading would put a whole converted copy in RAM before the move.
    load_dtype = stored_dtype(path) or device.dtype
    config_dir = config_root / layout.config_name
    if not config_dir.is_dir():
        raise CheckpointError(f"Missing config folder {config_dir} for {FAMILY_LABELS[layout.family]}")
    if layout.refiner:
        from diffusers import StableDiffusionXLImg2ImgPipeline as pipeline_class
    else:
        pipeline_class = StableDiffusionXLPipeline if layout.family == "sdxl" else StableDiffusionPipeline
    if layout.family == "sdxl":
        # The invisible watermark (applied when its package happens to be installed) alters pixels.
        extra = {"add_watermarker": False}
    else:
        extra = {"safety_checker": None, "requires_safety_checker": False}
    try:
        if layout.unet_in_channels != 4:
            # The family's config describes a 4-channel UNet; build this one with its own width.
            from diffusers import UNet2DConditionModel
            extra["unet"] = UNet2DConditionModel.from_single_file(
                str(path), config=str(config_dir), subfolder="unet", local_files_only=True,
                in_channels=layout.unet_in_channels, dtype=load_dtype)
        pipe = pipeline_class.from_single_file(
            str(path), config=str(config_dir), local_files_only=True, dtype=load_dtype, **extra)
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"Could not load '{info.name}' as {FAMILY_LABELS[layout.family]}: {_short(error)}",
            "checkpoint") from error
    _move(pipe, device)
    prediction = file_prediction(path, layout.family, pipe, allow_unsafe)
    _set_scheduler_prediction(pipe, prediction)
    log.info("%s: %s, %s", path.name, FAMILY_LABELS[layout.family], prediction.describe())
    return LoadedPipeline(pipe, layout.family, config_dir, prediction)


def _move(pipe, device: DeviceConfig) -> None:
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            # nn.Module.to converts one tensor at a time (diffusers' own .to warns on every
            # dtype change about float32 modules these models do not have). The VAE goes
            # straight to its own precision, so a 32-bit file's VAE never passes through 16-bit.
            torch.nn.Module.to(module, device.device, device.vae if name == "vae" else device.dtype)


def _set_scheduler_prediction(pipe, prediction: ModelPrediction) -> None:
    """The pipeline's scheduler told the discrete-schedule kind (an EDM model's own table is made
    from `prediction`, not from this config)."""
    kind = prediction.prediction_type if prediction.prediction_type != predictions.EDM else predictions.EPSILON
    if pipe.scheduler.config.get("prediction_type") != kind:
        pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, prediction_type=kind)


def load_diffusers_folder(info: CheckpointInfo, device: DeviceConfig) -> LoadedPipeline:
    from diffusers import DiffusionPipeline

    refuse_flow_folder(info)
    try:
        pipe = DiffusionPipeline.from_pretrained(
            info.path, dtype=device.dtype, local_files_only=True, safety_checker=None,
            requires_safety_checker=False)
    except Exception as error:
        raise CheckpointError(f"Could not load diffusers folder '{info.name}': {_short(error)}",
                              "checkpoint") from error
    family = family_of_pipeline(pipe)
    pipe.to(device.device)
    scheduler = pipe.scheduler
    return LoadedPipeline(pipe, family, None,
                          predictions.from_scheduler_config(scheduler.config, type(scheduler).__name__))


def is_refiner_pipeline(pipe) -> bool:
    """An SDXL refiner: a second text encoder and no first one."""
    return getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is not None


def load_builtin_demo(device: DeviceConfig, config_root: Path) -> LoadedPipeline:
    from engine.models.tiny_models import build_demo_pipeline

    pipe = build_demo_pipeline(config_root / "sd1" / "tokenizer")
    pipe.to(device.device)
    if device.dtype != torch.float32:
        pipe.to(dtype=device.dtype)
    return LoadedPipeline(pipe, "sd1", None)


def load_checkpoint(info: CheckpointInfo, device: DeviceConfig, config_root: Path = CONFIG_ROOT,
                    allow_unsafe: bool = False, modules=()) -> LoadedPipeline:
    """`modules`: for FLUX.1 / SD 3.x, {part: file} of the parts picked beside the checkpoint."""
    if info.kind == "builtin":
        loaded = load_builtin_demo(device, config_root)
    elif is_flow_checkpoint(info, allow_unsafe):
        from engine.models.flow_pipelines import load_flow_checkpoint
        loaded = load_flow_checkpoint(info, device, config_root, modules)
    elif info.kind == "diffusers":
        loaded = load_diffusers_folder(info, device)
    else:
        loaded = load_single_file(info, device, config_root, allow_unsafe)
    pipe = loaded.pipe
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    apply_vae_precision(pipe.vae, device)
    return loaded


def apply_vae_precision(vae, device: DeviceConfig) -> None:
    """The VAE in the precision the start flags ask for: 32-bit with --no-half-vae (or
    --precision full); never upcast for decoding with --precision half."""
    if device.vae_dtype is not None and vae.dtype != device.vae_dtype:
        torch.nn.Module.to(vae, dtype=device.vae_dtype)
    if device.half_vae_always and getattr(vae.config, "force_upcast", False):
        vae.register_to_config(force_upcast=False)


def latent_space_of(info: CheckpointInfo, allow_unsafe: bool = False) -> str | None:
    """"sd" (SD 1.x/2.x) or "sdxl" (SDXL and its refiner) for a checkpoint not loaded, read from
    its keys (a file) or its model_index.json (a diffusers folder); None when it cannot tell."""
    if info.kind == "builtin":
        return "sd"
    if info.kind in ("safetensors", "pickle", "gguf"):
        family = detect_layout(read_shapes(Path(info.path), allow_unsafe), info.name).family
        return family if FAMILIES[family].flow else "sdxl" if family == "sdxl" else "sd"
    refuse_flow_folder(info)
    flow_model = recognise_flow_folder(Path(info.path))
    if flow_model is not None:
        return flow_model.family
    index = Path(info.path) / "model_index.json"
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError):
        return None
    return "sdxl" if "XL" in name else "sd" if name.startswith("StableDiffusion") else None


def check_loadable(info: CheckpointInfo, allow_unsafe: bool) -> None:
    """Cheap checks (exists, readable, known layout) before anything is unloaded to make room."""
    if info.kind in ("safetensors", "pickle", "gguf"):
        layout = detect_layout(read_shapes(Path(info.path), allow_unsafe), info.name)
        if info.kind == "gguf" and not isinstance(layout, FlowModelFile):
            raise CheckpointError(f"'{info.name}' is a GGUF file but not a FLUX.1 or SD 3.x transformer", "checkpoint")
    elif info.kind == "diffusers":
        if not (Path(info.path) / "model_index.json").is_file():
            raise CheckpointError(f"Diffusers folder not found: {info.path}", "checkpoint")
        refuse_flow_folder(info)


def refuse_flow_folder(info: CheckpointInfo) -> None:
    """A FLUX.1 / SD 3.x diffusers folder of a variant with no config kept (Kontext) is named by
    its pipeline class and refused before its weights are read."""
    flow_model = recognise_flow_folder(Path(info.path))
    if flow_model is not None and not flow_model.supported:
        raise flow_model.refusal(info.name)


def flow_model_of(info: CheckpointInfo, allow_unsafe: bool = False) -> FlowModelFile | None:
    """The FLUX.1 / SD 3.x model a checkpoint holds, or None for any other checkpoint."""
    if info.kind == "diffusers":
        return recognise_flow_folder(Path(info.path))
    if info.kind in ("safetensors", "gguf"):   # a pickle would have to be unpickled whole to tell
        shapes = read_shapes(Path(info.path), allow_unsafe)
        return None if UNET_IN in shapes else recognise_flow_file(shapes)
    return None


def is_flow_checkpoint(info: CheckpointInfo, allow_unsafe: bool = False) -> bool:
    return flow_model_of(info, allow_unsafe) is not None


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:limit]
