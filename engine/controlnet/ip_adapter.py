"""IP-Adapter units: a reference picture as a prompt, through diffusers' IP-Adapter attention.

An IP-Adapter file (``ip-adapter_sd15.safetensors``, ``ip-adapter-plus_sd15``,
``ip-adapter-plus-face_sd15``, ``ip-adapter_sdxl_vit-h``... as users download them) holds two
groups of tensors: ``image_proj.*`` (what turns CLIP image features into extra context tokens)
and ``ip_adapter.N.to_k_ip/to_v_ip`` (the key/value projections of those tokens in every
cross-attention layer, N counting the UNet's attention layers from 0 in steps of 2). They sit in
models/ControlNet (as sd-webui-controlnet keeps them) or models/ipadapter (ComfyUI's folder) and
are told from ControlNets by those keys.

The picture is read by a CLIP vision encoder kept in models/ControlNet/annotators/clip_vision or
models/clip_vision (clip_encoders.py): a transformers ``CLIPVisionModelWithProjection`` folder, or
one file in transformers' key layout (``clip_h.pth``/``clip_g.pth`` as the extension names them,
or ComfyUI's ``CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors``). The "plain" adapters take the
encoder's projected image embedding, the "plus" and "full face" ones its penultimate hidden
states, as diffusers' pipelines do; the negative half of a guided batch gets zeros (plain) or the
features of an all-zero (normalised) picture (plus), also as diffusers does. Several reference
pictures in one unit are averaged after their projection into context tokens, as the extension
averages them (AveragedProjection). FaceID adapters read a face embedding instead (face_id.py;
zeros for the negative half), FaceID plus also CLIP ViT-H's hidden states, given to its projection
layer for each call.

For one job the adapters are loaded into the pipeline's UNet with diffusers'
``_load_ip_adapter_weights`` (several units: several adapters at once) and the UNet's own
attention processors, image projection and config are put back after, so the next job runs the
UNet exactly as before. A forward pre-hook hands the embeddings to each UNet call in
``added_cond_kwargs["image_embeds"]`` and sets each adapter's scale for the step: the unit's
weight inside its start/end window, 0 outside it (diffusers then skips that adapter).
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from engine.controlnet.clip_encoders import (  # noqa: F401 (the encoders' names are used through this module too)
    CLIP_G,
    CLIP_H,
    CLIP_L,
    ENCODER_LABELS,
    ENCODER_NAMES,
    encoder_folders,
    features_on,
    find_encoder,
    image_features,
    image_processor,
    load_encoder,
)
from engine.controlnet.units import ControlUnit
from engine.errors import CheckpointError, RequestError

IMAGE_PROJ, LAYERS = "image_proj.", "ip_adapter."
AUTO, INSIGHTFACE = "auto", "insightface"
FACE_ID_PLUS_MODULES = ("ip-adapter_face_id_plus",)   # face embeddings and CLIP ViT-H hidden states


# ---------------------------------------------------------------------------------------------
# Files


def is_ip_adapter_keys(keys) -> bool:
    keys = list(keys)
    return any(k.startswith(IMAGE_PROJ) for k in keys) and any(k.startswith(LAYERS) for k in keys)


def read_state(path: Path, name: str, allow_unsafe: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """{"image_proj": {...}, "ip_adapter": {...}} from a .safetensors (flat, prefixed keys) or a
    .bin/.pth (the nested dict the original releases were saved as, or flat; pickles only with
    --allow-unsafe-checkpoints, as every pickled model here)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" and not allow_unsafe:
        raise CheckpointError(f"'{name}' is a pickled file ({path.suffix}); pickles are refused. Use the "
                              ".safetensors version of this IP-Adapter, or start with --allow-unsafe-checkpoints "
                              "if you trust where the file came from.", "model")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file
            flat = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(loaded, dict) and isinstance(loaded.get("image_proj"), dict):
                return {"image_proj": dict(loaded["image_proj"]), "ip_adapter": dict(loaded.get("ip_adapter", {}))}
            flat = loaded
    except Exception as error:
        raise CheckpointError(f"IP-Adapter '{name}' cannot be read ({str(error)[:200]}); download it again",
                              "model") from error
    if not isinstance(flat, dict) or not is_ip_adapter_keys(flat):
        raise CheckpointError(f"'{name}' is not an IP-Adapter (no image_proj.* and ip_adapter.* tensors)", "model")
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        for prefix, group in ((IMAGE_PROJ, "image_proj"), (LAYERS, "ip_adapter")):
            if key.startswith(prefix):
                state[group][key[len(prefix):]] = value
    return state


def key_shapes(path: Path, name: str, allow_unsafe: bool = False) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes, read cheaply (a .safetensors header); nested .bin keys flattened."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except (SafetensorError, OSError, ValueError):  # unreadable: loading it names the problem
            return {}
    if not allow_unsafe:
        return {}  # a pickle is not opened without --allow-unsafe-checkpoints
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    shapes = {}
    for key, value in loaded.items():
        if isinstance(value, dict) and key in ("image_proj", "ip_adapter"):
            shapes.update({f"{key}.{k}": tuple(v.shape) for k, v in value.items() if isinstance(v, torch.Tensor)})
        elif isinstance(value, torch.Tensor):
            shapes[key] = tuple(value.shape)
    return shapes


def family_of(shapes: dict[str, tuple[int, ...]]) -> str:
    """"sd1", "sd2" or "sdxl" by the width of the context the adapter's keys read (768/1024/2048)."""
    cross = next((s[1] for k, s in sorted(shapes.items()) if k.endswith("to_k_ip.weight") and len(s) == 2), None)
    if cross == 2048:
        return "sdxl"
    if cross == 1024:
        return "sd2"
    return "sd1"


@dataclass(frozen=True)
class AdapterKind:
    name: str          # "plain", "plus", "full face", "faceid", "faceid plus"
    hidden_states: bool  # reads the encoder's penultimate hidden states (else its image embedding)
    embed_dim: int     # the width of what it reads
    face_id: bool = False


def kind_of(image_proj: dict[str, tuple[int, ...]]) -> AdapterKind:
    """Which image projection an adapter has (the names diffusers' converter tells apart)."""
    if "perceiver_resampler.proj_in.weight" in image_proj:
        return AdapterKind("faceid plus", False, image_proj["proj.0.weight"][1], face_id=True)
    if "proj.weight" in image_proj:
        return AdapterKind("plain", False, image_proj["proj.weight"][1])
    if "proj.3.weight" in image_proj:
        return AdapterKind("full face", True, image_proj["proj.0.weight"][1])
    if "norm.weight" in image_proj and "latents" not in image_proj:
        return AdapterKind("faceid", False, image_proj["proj.0.weight"][1], face_id=True)
    if "latents" in image_proj and "proj_in.weight" in image_proj:
        return AdapterKind("plus", True, image_proj["proj_in.weight"][1])
    raise CheckpointError("an IP-Adapter with an image projection of no known kind", "model")


def kind_of_shapes(shapes: dict[str, tuple[int, ...]]) -> AdapterKind:
    return kind_of({k[len(IMAGE_PROJ):]: s for k, s in shapes.items() if k.startswith(IMAGE_PROJ)})


# ---------------------------------------------------------------------------------------------
# Preprocessors and image encoders


def encoder_for(encoder: str, model: str, family: str) -> str:
    """The image encoder a module reads pictures with; "ip-adapter-auto" picks by the model's
    name, as the extension's presets do (SD 1.x: ViT-H unless "vit-g"; SDXL: bigG unless "vit-h")."""
    if encoder != AUTO:
        return encoder
    lowered = model.lower()
    if family == "sdxl":
        return CLIP_H if "vit-h" in lowered else CLIP_G
    return CLIP_G if "vit-g" in lowered else CLIP_H


class AveragedProjection(torch.nn.Module):
    """diffusers' MultiIPAdapterImageProjection with each adapter's pictures averaged after their
    projection into context tokens, as sd-webui-controlnet averages them (diffusers itself would
    give attention all the pictures' tokens side by side)."""

    def __init__(self, projection: torch.nn.Module):
        super().__init__()
        self.projection = projection

    def forward(self, image_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        return [tokens.mean(dim=1, keepdim=True) for tokens in self.projection(image_embeds)]


# ---------------------------------------------------------------------------------------------
# Units in a job


@dataclass
class PreparedAdapter:
    index: int
    unit: ControlUnit
    state: dict[str, dict[str, torch.Tensor]]
    cond: torch.Tensor      # one per picture: (pictures, D), or (pictures, tokens, D) for the hidden states
    uncond: torch.Tensor    # the negative half's: (1, ...)
    detected: Image.Image   # what the unit shows: the reference picture
    clip: tuple | None = None   # FaceID plus: CLIP hidden states (pictures, tokens, W) and the negative's
    shortcut: bool = False      # FaceID plus v2: the face tokens added back after the resampler

    def active_at(self, step: int, total: int) -> bool:
        return self.unit.active_at(step, total)

    def batch(self, size: int, cfg: bool, device, dtype) -> torch.Tensor:
        """The features for a UNet batch of `size` ([negative, positive] halves when guided), with
        diffusers' images-per-adapter axis holding the pictures (AveragedProjection averages them)."""
        return _halves(self.cond, self.uncond, size, cfg, device, dtype)

    def clip_batch(self, size: int, cfg: bool, device, dtype) -> torch.Tensor:
        """FaceID plus: the CLIP hidden states batched as `batch` batches the face embeddings."""
        return _halves(*self.clip, size, cfg, device, dtype)


def _halves(cond: torch.Tensor, uncond: torch.Tensor, size: int, cfg: bool, device, dtype) -> torch.Tensor:
    cond, uncond = cond.to(device, dtype)[None], uncond.to(device, dtype)[None]
    uncond = uncond.expand(1, cond.shape[1], *uncond.shape[2:])
    if cfg and size % 2 == 0:
        half = size // 2
        return torch.cat([uncond.expand(half, *uncond.shape[1:]), cond.expand(half, *cond.shape[1:])])
    return cond.expand(size, *cond.shape[1:])


def unit_images(unit: ControlUnit, fallback: Image.Image | None) -> list[Image.Image]:
    first = unit.image if unit.image is not None else fallback
    return ([first] if first is not None else []) + list(unit.more_images)


def prepare(units: list[tuple[int, ControlUnit]], library, device, dtype,
            fallback_image: Image.Image | None = None) -> list[PreparedAdapter]:
    """Each IP-Adapter unit's state dict and its pictures' features (the encoder freed after)."""
    from engine.controlnet import preprocessors

    prepared = []
    for index, unit in units:
        images = unit_images(unit, fallback_image)
        if not images:
            raise RequestError(f"ControlNet unit {index} is an IP-Adapter unit without a reference image", "image")
        entry = library.entry(unit.model)
        state = read_state(entry.path, entry.name, library.allow_unsafe)
        kind = kind_of({k: tuple(v.shape) for k, v in state["image_proj"].items()})
        module = preprocessors.find(unit.module)
        if kind.face_id or module.ip_encoder == INSIGHTFACE:
            from engine.controlnet import face_id

            mismatch = face_id.mismatch(index, module.name, entry.name, kind)
            if mismatch:
                raise RequestError(mismatch, "module")
            cond, uncond, clip = face_id.features(state["image_proj"], kind, images, library, device, dtype,
                                                  f"ControlNet unit {index}")
            state = {group: {k: v.to(dtype) for k, v in tensors.items()} for group, tensors in state.items()}
            prepared.append(PreparedAdapter(index, unit, state, cond, uncond, images[0], clip=clip,
                                            shortcut="v2" in entry.name.lower()))   # the extension's test
            continue
        encoder_kind = encoder_for(module.ip_encoder, entry.name, library.family(entry.name))
        path = library.encoder_path(encoder_kind)   # downloaded on first use where allowed
        encoder, processor = library.image_encoder(path)
        width = encoder.config.hidden_size if kind.hidden_states else encoder.config.projection_dim
        if width != kind.embed_dim:
            raise RequestError(
                f"ControlNet unit {index}: '{entry.name}' ({kind.name} IP-Adapter) reads {kind.embed_dim}-wide image "
                f"features, but the image encoder {path.name} gives {width}: pick the preprocessor made for this "
                "model (ip-adapter-auto picks by the model's name)", "module")
        cond, uncond = features_on(device, dtype, encoder, processor, images, kind.hidden_states)
        state = {group: {k: v.to(dtype) for k, v in tensors.items()} for group, tensors in state.items()}
        prepared.append(PreparedAdapter(index, unit, state, cond, uncond, images[0]))
    return prepared


def _load(unet, states: list[dict], shortcuts: list[bool]) -> None:
    """The adapters' layers into `unet`, as diffusers' ``_load_ip_adapter_weights`` puts them (its
    converter for the image projections, its IPAdapterAttnProcessor2_0 with the same names and
    token counts in every cross-attention layer), except that the other layers keep their own
    processors (diffusers makes new ones of their class, which fails for ones that take
    arguments, like attention slicing's) and the UNet is not cast as a whole for a few new layers."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    unet.encoder_hid_proj = None  # a "plus" projection's attention layers must not count as the UNet's
    widths = list(unet.config.block_out_channels)
    tokens = [_token_count(state["image_proj"]) for state in states]
    processors, key = {}, 1
    for name, current in unet.attn_processors.items():
        if name.endswith("attn1.processor") or "motion_modules" in name:
            processors[name] = current
            continue
        if name.startswith("mid_block"):
            width = widths[-1]
        elif name.startswith("up_blocks"):
            width = widths[::-1][int(name.split(".")[1])]
        else:
            width = widths[int(name.split(".")[1])]
        processor = IPAdapterAttnProcessor2_0(hidden_size=width, cross_attention_dim=unet.config.cross_attention_dim,
                                              scale=1.0, num_tokens=tokens)
        weights = {}
        for number, state in enumerate(states):
            for part in ("to_k_ip", "to_v_ip"):
                weights[f"{part}.{number}.weight"] = state["ip_adapter"][f"{key}.{part}.weight"]
        processor.load_state_dict(weights)
        processors[name] = processor
        key += 2
    unet.set_attn_processor(processors)
    layers = [unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"], low_cpu_mem_usage=False)
              for state in states]
    for layer, shortcut in zip(layers, shortcuts):
        if hasattr(layer, "shortcut"):   # FaceID plus
            layer.shortcut = shortcut
    unet.encoder_hid_proj = AveragedProjection(MultiIPAdapterImageProjection(layers))
    unet.config.encoder_hid_dim_type = "ip_image_proj"


def _token_count(image_proj: dict[str, torch.Tensor]) -> int:
    """Context tokens an adapter adds (diffusers' numbers: 4 for plain and FaceID, 257 for full face)."""
    if "proj.3.weight" in image_proj:
        return 257
    if "latents" in image_proj and "perceiver_resampler.proj_in.weight" not in image_proj:
        return image_proj["latents"].shape[1]
    return 4


def _ip_processors(unet) -> list:
    from diffusers.models.attention_processor import (
        IPAdapterAttnProcessor,
        IPAdapterAttnProcessor2_0,
    )

    return [p for p in unet.attn_processors.values() if isinstance(p, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))]


@contextlib.contextmanager
def attached(unet: torch.nn.Module, adapters: list[PreparedAdapter], cfg: bool,
             progress: Callable[[], tuple[int, int] | None], device=None) -> Iterator[None]:
    """For the duration: the adapters (those with a weight) loaded into `unet`, each UNet call
    given their features and each adapter's scale for its step. The UNet's own processors,
    image projection and config come back after. `device`: where the UNet computes; the
    adapter's layers are put there (under layer-by-layer offload the UNet's own `to` moves nothing,
    and the new layers have no offload hooks of their own)."""
    adapters = [item for item in adapters if item.unit.weight != 0]
    if not adapters:
        yield
        return
    saved_processors = dict(unet.attn_processors)
    saved_projection = unet.encoder_hid_proj
    saved_type = unet.config.encoder_hid_dim_type
    handle = None
    try:
        try:
            _load(unet, [item.state for item in adapters], [item.shortcut for item in adapters])
        except (KeyError, RuntimeError, ValueError) as error:
            names = ", ".join(f"'{item.unit.model}'" for item in adapters)
            raise RequestError(f"IP-Adapter {names} does not fit the loaded checkpoint's UNet (its layers differ: "
                               f"{str(error)[:200]}); pick an IP-Adapter made for this checkpoint's family",
                               "model") from error
        processors = _ip_processors(unet)
        dtype = next(iter(adapters[0].state["ip_adapter"].values())).dtype
        for module in (*processors, unet.encoder_hid_proj):
            torch.nn.Module.to(module, device=device if device is not None else unet.device, dtype=dtype)

        def give_features(module, args, kwargs):
            where = progress()
            scales = [float(item.unit.weight) if where is not None and item.active_at(*where) else 0.0
                      for item in adapters]
            for processor in processors:
                processor.scale = scales
            sample = args[0] if args else kwargs["sample"]
            dtype = unet.dtype
            added = dict(kwargs.get("added_cond_kwargs") or {})
            added["image_embeds"] = [item.batch(sample.shape[0], cfg, sample.device, dtype) for item in adapters]
            for item, layer in zip(adapters, unet.encoder_hid_proj.projection.image_projection_layers):
                if item.clip is not None:   # FaceID plus reads them from its layer, batched alike
                    layer.clip_embeds = item.clip_batch(sample.shape[0], cfg, sample.device, dtype)
            return args, {**kwargs, "added_cond_kwargs": added}

        handle = unet.register_forward_pre_hook(give_features, with_kwargs=True)
        yield
    finally:
        if handle is not None:
            handle.remove()
        # The projection first: a "plus" one holds attention layers of its own, which would
        # count among the UNet's processors.
        unet.encoder_hid_proj = saved_projection
        unet.config.encoder_hid_dim_type = saved_type
        unet.set_attn_processor(dict(saved_processors))
