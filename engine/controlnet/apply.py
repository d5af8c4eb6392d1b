"""Putting ControlNet units to work in a job.

The ControlNets are attached to the loaded pipeline's own UNet for the length of one job: its
forward first runs every active unit's ControlNet on the same inputs and hands the summed
residuals to the UNet. One mechanism so serves txt2img, img2img, inpainting (9-channel models
included) and every sampler, with our own seeded latents, and no pipeline or module is copied.
(diffusers' ControlNet pipelines were not used for this: its inpaint variant cannot start from
latents we encoded ourselves, which our masked-content modes need.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from engine import image_prep
from engine.errors import RequestError
from engine.controlnet import ip_adapter, preprocessors, style_adapter, t2i_adapter
from engine.controlnet.annotators import Annotators
from engine.controlnet.latent_fixes import FIXING_MODULES, LatentFix, latent_mask
from engine.controlnet.layouts import UNION_CONTROL_TYPES
from engine.controlnet.units import (
    CONTROLNET_MORE,
    PROMPT_MORE,
    RESIZE_MODES,
    ControlUnit,
    pixel_perfect_resolution,
)

_RESIZE = dict(zip(RESIZE_MODES, (image_prep.JUST_RESIZE, image_prep.CROP_AND_RESIZE, image_prep.RESIZE_AND_FILL)))
PROMPT_SOFTNESS = 0.825  # "My prompt is more important": each shallower residual this much weaker


def detect_map(unit: ControlUnit, image: Image.Image, width: int, height: int,
               models_dir: Path | None = None, mask: Image.Image | None = None,
               annotators: Annotators | None = None) -> Image.Image:
    """The unit's preprocessor run on `image`, at the resolution the unit asks for.
    `annotators`: where weight-needing preprocessors keep their detectors (the library's)."""
    if unit.pixel_perfect:
        resolution = pixel_perfect_resolution(image, width, height, unit.resize_mode)
    else:
        resolution = unit.processor_res if unit.processor_res > 0 else 512
    return preprocessors.run(unit.module, image, resolution,
                             unit.threshold_a if unit.threshold_a >= 0 else None,
                             unit.threshold_b if unit.threshold_b >= 0 else None,
                             mask=unit.mask if unit.mask is not None else mask, models_dir=models_dir,
                             annotators=annotators)


def resize_mode_of(resize_mode: str) -> int:
    """The image_prep resize mode a unit's resize mode names."""
    return _RESIZE[resize_mode]


def control_tensor(control_map: Image.Image, width: int, height: int, resize_mode: str) -> torch.Tensor:
    """The map framed to width x height as the unit's resize mode says, as a (1, 3, H, W) tensor
    in [0, 1]; pixels an inpaint map marks (alpha 0) are -1, as inpaint ControlNets expect."""
    mode = _RESIZE[resize_mode]
    rgb = image_prep.resize_image(control_map.convert("RGB"), mode, width, height)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    if control_map.mode == "RGBA":
        alpha = image_prep.resize_image(control_map.getchannel("A"), mode, width, height)
        masked = torch.from_numpy(np.asarray(alpha) < 128)[None, None].expand_as(pixels)
        pixels = pixels.masked_fill(masked, -1.0)
    return pixels


@dataclass
class PreparedUnit:
    index: int
    unit: ControlUnit
    net: torch.nn.Module
    control: torch.Tensor                  # (1, 3, H, W) at the job's size
    detected: Image.Image                  # the map, for showing
    _sized: dict = field(default_factory=dict)
    fix: LatentFix | None = None           # what it does to the UNet's prediction (latent_fixes.py)
    union_type: int | None = None          # a Union / ProMax model's control type (its index)
    tokens: torch.Tensor | None = None     # a style adapter's prompt tokens (style_adapter.py)

    @property
    def note(self) -> str:
        """What the job is told about this unit's preprocessor (a part that is not here)."""
        return preprocessors.find(self.unit.module).note

    def control_for(self, sample: torch.Tensor, scale: int) -> torch.Tensor:
        """The control image at the size of this sample (a hires pass has another), batched."""
        size = (sample.shape[-2] * scale, sample.shape[-1] * scale)
        if size not in self._sized:
            control = self.control
            if control.shape[-2:] != size:
                control = torch.nn.functional.interpolate(control, size=size, mode="bilinear", align_corners=False)
            self._sized[size] = control.to(sample.device, self.net.dtype)
        control = self._sized[size]
        return control.expand(sample.shape[0], -1, -1, -1)

    def adapter_states(self, sample: torch.Tensor, scale: int) -> list[torch.Tensor]:
        """A T2I-Adapter unit's feature maps for this sample's size, times the unit's weight, batched."""
        size = ("adapter", sample.shape[-2] * scale, sample.shape[-1] * scale)
        if size not in self._sized:
            control = self.control_for(sample[:1], scale)
            self._sized[size] = [state * float(self.unit.weight) for state in t2i_adapter.features(self.net, control)]
        return [state.to(sample.device, sample.dtype).expand(sample.shape[0], -1, -1, -1)
                for state in self._sized[size]]

    def active_at(self, step: int, total: int) -> bool:
        return self.unit.active_at(step, total)


def prepare(units: list[tuple[int, ControlUnit]], library, width: int, height: int, device, dtype,
            fallback_image: Image.Image | None = None, fallback_mask: Image.Image | None = None,
            models_dir: Path | None = None, unet=None) -> list[PreparedUnit]:
    """Each unit's map and ControlNet, ready for `attached`. `fallback_image`: img2img's init
    image, used by units without their own picture (as the ecosystem does)."""
    prepared = []
    for index, unit in units:
        image = unit.image if unit.image is not None else fallback_image
        if image is None:
            raise RequestError(f"ControlNet unit {index} is enabled but has no control image", "image")
        detected = detect_map(unit, image.convert("RGBA") if image.mode == "RGBA" else image.convert("RGB"),
                              width, height, models_dir, fallback_mask, library.annotators)
        net = library.load(unit.model, unet=unet)   # `unet`: what a Control-LoRA is built from
        if style_adapter.is_style(net):   # tokens made once, from the picture, on the CPU
            encoder, processor = library.image_encoder(library.encoder_path(ip_adapter.CLIP_L))
            prepared.append(PreparedUnit(index, unit, net, torch.zeros(1, 3, 1, 1), detected,
                                         tokens=style_adapter.style_tokens(net, encoder, processor, detected)))
            continue
        if net.device != torch.device(device) or net.dtype != dtype:
            net = net.to(device, dtype)
        prepared.append(PreparedUnit(index, unit, net, control_tensor(detected, width, height, unit.resize_mode),
                                     detected, union_type=union_type(index, unit, net)))
    return prepared


def _residuals(item: PreparedUnit, sample, timestep, hidden, added, cfg: bool, scale: int):
    channels = item.net.config.in_channels  # a 9-channel inpainting UNet's extra inputs are not for it
    control = item.control_for(sample, scale)
    if item.union_type is None:
        down, mid = item.net(sample[:, :channels], timestep, encoder_hidden_states=hidden, controlnet_cond=control,
                             conditioning_scale=float(item.unit.weight), added_cond_kwargs=added, return_dict=False)
    else:   # a Union / ProMax model: one condition, of the unit's control type
        kinds = torch.zeros(sample.shape[0], item.net.config.num_control_type, device=sample.device,
                            dtype=item.net.dtype)
        kinds[:, item.union_type] = 1
        down, mid = item.net(sample[:, :channels], timestep, encoder_hidden_states=hidden, controlnet_cond=[control],
                             control_type=kinds, control_type_idx=[item.union_type],
                             conditioning_scale=float(item.unit.weight), added_cond_kwargs=added, return_dict=False)
    down, mid = list(down), mid
    if item.unit.control_mode in (PROMPT_MORE, CONTROLNET_MORE):  # both soften, as the ecosystem does
        count = len(down) + 1
        down = [d * PROMPT_SOFTNESS ** (count - 1 - k) for k, d in enumerate(down)]
    if item.unit.control_mode == CONTROLNET_MORE and cfg and sample.shape[0] % 2 == 0:
        # Control on the prompted half of the batch only: guidance then pushes towards it.
        half = sample.shape[0] // 2
        keep = torch.ones(sample.shape[0], 1, 1, 1, device=mid.device, dtype=mid.dtype)
        keep[:half] = 0
        down, mid = [d * keep for d in down], mid * keep
    return down, mid


# The preprocessors whose maps each control type of a Union model was trained on (the extension's
# tags: openpose, depth, softedge/scribble, canny/lineart/mlsd, normalmap, segmentation, tile, inpaint).
_UNION_TYPE_OF_MODULE = (("OpenPose", ("openpose",)), ("Depth", ("depth",)),
                         ("Soft Edge", ("softedge", "scribble", "hed", "pidinet")),
                         ("Hard Edge", ("canny", "lineart", "mlsd", "invert")),
                         ("Normal Map", ("normal",)), ("Segmentation", ("seg",)),
                         ("Tile", ("tile", "blur")), ("Inpaint", ("inpaint",)))


def union_type(index: int, unit: ControlUnit, net) -> int | None:
    """The control type index a Union / ProMax model is run with for `unit` (None: not a Union
    model): the unit's union_control_type, else the one its preprocessor's maps are."""
    types = getattr(net.config, "num_control_type", None)
    if types is None:
        return None
    name = unit.union_control_type
    if not name:
        module = preprocessors.find(unit.module).name
        name = next((kind for kind, prefixes in _UNION_TYPE_OF_MODULE if module.startswith(prefixes)), "")
    if not name:
        raise RequestError(f"ControlNet unit {index}: '{unit.model}' is a ControlNet Union model, which is told "
                           f"what kind of map it gets: set union_control_type ({', '.join(UNION_CONTROL_TYPES)}) "
                           f"or pick a preprocessor of one of those kinds", "union_control_type")
    position = UNION_CONTROL_TYPES.index(name)
    if position >= types:
        raise RequestError(f"ControlNet unit {index}: '{unit.model}' knows the first {types} control types "
                           f"({', '.join(UNION_CONTROL_TYPES[:types])}), not {name} (ProMax adds Tile and "
                           "Inpaint)", "union_control_type")
    return position


def add_latent_fixes(prepared: list[PreparedUnit], width: int, height: int,
                     encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Give the units whose preprocessor corrects the UNet's prediction (tile_colorfix,
    inpaint_only) their LatentFix: the control picture framed to width x height and encoded by
    `encode` ((1, 3, H, W) in [-1, 1] to latents), and for inpainting the latent-size mask."""
    for item in prepared:
        preprocessor = preprocessors.find(item.unit.module)
        if preprocessor.name not in FIXING_MODULES:
            continue
        mode = _RESIZE[item.unit.resize_mode]
        rgb = image_prep.resize_image(item.detected.convert("RGB"), mode, width, height)
        latents = encode(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None])
        mask = None
        if preprocessor.needs_mask:
            alpha = image_prep.resize_image(item.detected.getchannel("A"), mode, width, height) \
                if item.detected.mode == "RGBA" else Image.new("L", (width, height), 255)
            mask = latent_mask(torch.from_numpy((np.asarray(alpha) < 128).astype(np.float32))[None, None])

        def slider(value: float, default) -> float:
            return value if value >= 0 else (default.default if default is not None else 0.0)

        item.fix = LatentFix(preprocessor.name, item.unit.weight, latents.float().cpu(),
                             int(slider(item.unit.threshold_a, preprocessor.threshold_a)),
                             slider(item.unit.threshold_b, preprocessor.threshold_b), mask)


@contextlib.contextmanager
def attached(unet: torch.nn.Module, units: list[PreparedUnit], cfg: bool,
             progress: Callable[[], tuple[int, int] | None], vae_scale: int = 8,
             alphas_cumprod: torch.Tensor | None = None, prediction_type: str = "epsilon") -> Iterator[None]:
    """For the duration: `unet` adds the active units' residuals on every call, and the units
    with a LatentFix correct its prediction after it (given the model's `alphas_cumprod` and
    `prediction_type`). `progress` gives (step index, steps in this pass), or None for no control
    in this call; `cfg`: the batch is [negative, positive]."""

    # A forward pre-hook, not a replaced `forward`: offload hooks replace `forward` themselves,
    # and diffusers takes them off and puts them back at the end of a pipeline call (model
    # offload), which would drop a replaced forward in the middle of a job.
    def add_residuals(module, args, kwargs):
        where = progress()
        if where is None:
            return None
        step, total = where
        sample, timestep = _argument(args, kwargs, 0, "sample"), _argument(args, kwargs, 1, "timestep")
        hidden = _argument(args, kwargs, 2, "encoder_hidden_states")
        active = [item for item in units if item.unit.weight != 0 and item.active_at(step, total)]
        # Style tokens first: ControlNets then see the longer context too, as the extension has it.
        styles = [item.tokens * float(item.unit.weight) for item in active if item.tokens is not None]
        if styles:
            hidden = style_adapter.with_style(hidden, styles, cfg)
            if len(args) > 2:
                args = (*args[:2], hidden, *args[3:])
            else:
                kwargs = {**kwargs, "encoder_hidden_states": hidden}
        down_sum, mid_sum, adapter_sum = None, None, None
        for item in active:   # the others are skipped outright: exactly the result of no unit
            if item.tokens is not None:
                continue
            if t2i_adapter.is_adapter(item.net):
                states = item.adapter_states(sample, vae_scale)
                adapter_sum = states if adapter_sum is None else [a + b for a, b in zip(adapter_sum, states)]
                continue
            down, mid = _residuals(item, sample, timestep, hidden, kwargs.get("added_cond_kwargs"), cfg, vae_scale)
            if down_sum is None:
                down_sum, mid_sum = down, mid
            else:
                down_sum = [a + b for a, b in zip(down_sum, down)]
                mid_sum = mid_sum + mid
        if down_sum is None and adapter_sum is None:
            return (args, kwargs) if styles else None
        extra = {}
        if down_sum is not None:
            extra.update(down_block_additional_residuals=tuple(down_sum), mid_block_additional_residual=mid_sum)
        if adapter_sum is not None:   # a new list each call: the UNet takes its items off as it goes
            extra["down_intrablock_additional_residuals"] = list(adapter_sum)
        return args, {**kwargs, **extra}

    def fix_prediction(module, args, kwargs, output):
        where = progress()
        fixes = [item.fix for item in units if item.fix is not None and item.unit.weight > 0
                 and where is not None and item.active_at(*where)]
        if not fixes or alphas_cumprod is None or prediction_type not in ("epsilon", "v_prediction"):
            return None
        sample, timestep = _argument(args, kwargs, 0, "sample"), _argument(args, kwargs, 1, "timestep")
        predicted = output[0] if isinstance(output, tuple) else output.sample
        cond_mark = torch.ones(predicted.shape[0], 1, 1, 1, device=predicted.device)
        if cfg and predicted.shape[0] % 2 == 0:
            cond_mark[:predicted.shape[0] // 2] = 0   # the negative half
        for fix in fixes:
            predicted = fix.apply(sample, timestep, predicted, alphas_cumprod, prediction_type, cond_mark)
        if isinstance(output, tuple):
            return (predicted, *output[1:])
        output.sample = predicted
        return output

    handles = [unet.register_forward_pre_hook(add_residuals, with_kwargs=True)]
    if any(item.fix is not None for item in units):
        handles.append(unet.register_forward_hook(fix_prediction, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _argument(args: tuple, kwargs: dict, index: int, name: str):
    return args[index] if len(args) > index else kwargs.get(name)
