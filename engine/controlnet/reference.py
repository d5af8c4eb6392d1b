"""reference_only: a unit with no ControlNet model that makes the picture borrow from a reference
picture through the UNet's own self-attention, as the ControlNet extension does it.

At each step the reference picture's latents, noised to the step's timestep, go through the UNet
first ("write"): every self-attention layer chosen by the unit's weight keeps its input. The real
call ("read") then lets each of those layers attend to its own input and the kept ones together.
Style Fidelity (threshold_a, 0.5) blends, for the negative half of the batch, that with plain
self-attention: fidelity 1 keeps the negative half plain, so guidance pushes towards the
reference. "ControlNet is more important" sets it to 1, "My prompt is more important" (and a hires
pass) to 0; SDXL uses its cube, as the extension does.

The layers are ordered widest first (in the UNet's order: encoder, middle, decoder) and layer i of
n takes part when the unit's weight is above i / n: weight 1 uses them all, 0.5 the wider half.
It is done with attention processors set on the UNet's self-attention modules for the job and
taken off after (no global patch), so every other job is untouched.

reference_adain matches statistics instead: the write pass keeps, at the outputs of chosen blocks
of the original UNet (the middle block, the later encoder blocks, the first decoder blocks), each
channel's mean and variance over the picture; the read pass moves its own output's to them (AdaIN),
blended for the negative half by Style Fidelity as above. A block takes part when the unit's weight
is above its threshold (the extension's: 0 for the middle block, rising along the decoder, falling
along the encoder, on a 0-2 scale), so weight 1 uses the deeper ones. reference_adain+attn does both.
These are forward hooks on the modules that end those blocks, removed after the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MODULES = ("reference_only", "reference_adain", "reference_adain+attn")
ATTENTION_MODULES = ("reference_only", "reference_adain+attn")
ADAIN_MODULES = ("reference_adain", "reference_adain+attn")


@dataclass
class Bank:
    """What one self-attention layer kept in the write pass(es) of a step."""
    states: list = field(default_factory=list)
    fidelities: list = field(default_factory=list)


class ReferenceState:
    """The mode the layers are in: None (plain), "write" or "read", with the write's settings."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.attention = True    # what the write keeps: self-attention inputs,
        self.adain = False       # block output statistics
        self.weight = 1.0
        self.fidelity = 0.5
        self.negative_rows: slice | None = None   # the batch's negative half, when guided


class ReferenceAttention:
    """The processor set on one self-attention module: keeps its input when writing, attends to
    its input and the kept ones when reading, and is the module's own processor otherwise."""

    def __init__(self, original, state: ReferenceState, rank: float):
        self.original, self.state, self.rank = original, state, rank
        self.bank = Bank()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        state = self.state

        def plain(states, context=None):
            return self.original(attn, states, encoder_hidden_states=context, attention_mask=attention_mask,
                                 temb=temb, **kwargs)

        if encoder_hidden_states is not None or state.mode is None:
            return plain(hidden_states, encoder_hidden_states)
        if state.mode == "write":
            if state.attention and state.weight > self.rank:
                self.bank.states.append(hidden_states.detach().clone())
                self.bank.fidelities.append(state.fidelity)
            return plain(hidden_states)
        if not self.bank.states:
            return plain(hidden_states)
        fidelity = sum(self.bank.fidelities) / len(self.bank.fidelities)
        kept = [bank.to(hidden_states.dtype) for bank in self.bank.states]
        self.bank = Bank()
        with_reference = plain(hidden_states, torch.cat([hidden_states, *kept], dim=1))
        rows = state.negative_rows
        if rows is None or fidelity <= 1e-5:
            return with_reference
        kept_plain = with_reference.clone()
        kept_plain[rows] = plain(hidden_states[rows])
        return fidelity * kept_plain + (1.0 - fidelity) * with_reference


def self_attention_layers(unet) -> list:
    """The UNet's self-attention modules (each transformer block's attn1), widest first, in the
    order encoder, middle, decoder within a width (the original UNet's order)."""
    from diffusers.models.attention import BasicTransformerBlock

    parts = [getattr(unet, name, None) for name in ("down_blocks", "mid_block", "up_blocks")]
    blocks = [module for part in parts if part is not None for module in part.modules()
              if isinstance(module, BasicTransformerBlock) and not getattr(module, "only_cross_attention", False)]
    return sorted(blocks, key=lambda block: -block.norm1.normalized_shape[0])


def fidelity_for(threshold_a: float, control_mode: str, sdxl: bool, hires: bool) -> float:
    from engine.controlnet.units import CONTROLNET_MORE, PROMPT_MORE

    fidelity = min(1.0, max(0.0, 0.5 if threshold_a < 0 else float(threshold_a)))
    if sdxl:
        fidelity **= 3.0
    if control_mode == CONTROLNET_MORE:
        return 1.0
    if control_mode == PROMPT_MORE or hires:
        return 0.0
    return fidelity


class AdainBank:
    """What one block output kept in the write pass(es) of a step: per-channel statistics."""

    def __init__(self) -> None:
        self.means: list[torch.Tensor] = []
        self.variances: list[torch.Tensor] = []
        self.fidelities: list[float] = []


ADAIN_EPS = 1e-6


def adain_blend(x: torch.Tensor, bank: AdainBank, negative_rows: slice | None) -> torch.Tensor:
    """`x` with each channel's mean and spread moved to the kept ones (averaged over the write
    passes); the negative rows blended back towards `x` by the kept Style Fidelity."""
    fidelity = sum(bank.fidelities) / len(bank.fidelities)
    variance, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    std = variance.clamp_min(ADAIN_EPS) ** 0.5
    kept_mean = sum(bank.means) / len(bank.means)
    kept_std = (sum(bank.variances) / len(bank.variances)).clamp_min(ADAIN_EPS) ** 0.5
    matched = (x - mean) / std * kept_std.to(x.dtype) + kept_mean.to(x.dtype)
    if negative_rows is None or fidelity <= 1e-5:
        return matched
    kept_plain = matched.clone()
    kept_plain[negative_rows] = x[negative_rows]
    return fidelity * kept_plain + (1.0 - fidelity) * matched


class AdainHook:
    """The forward hook on the module that ends one block of the original UNet."""

    def __init__(self, state: ReferenceState, threshold: float):
        self.state, self.threshold = state, threshold
        self.bank = AdainBank()

    def __call__(self, module, args, output):
        state = self.state
        x = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if state.mode == "write":
            if state.adain and state.weight > self.threshold:
                variance, mean = torch.var_mean(x.detach().float(), dim=(2, 3), keepdim=True, correction=0)
                self.bank.means.append(mean)
                self.bank.variances.append(variance)
                self.bank.fidelities.append(state.fidelity)
            return None
        if state.mode != "read" or not self.bank.means:
            return None
        bank, self.bank = self.bank, AdainBank()
        y = adain_blend(x.float(), bank, state.negative_rows).to(x.dtype)
        if isinstance(output, tuple):
            return (y, *output[1:])
        return type(output)(sample=y) if hasattr(output, "sample") else y


def _original_blocks(unet) -> tuple[list, list]:
    """The modules whose outputs are the original (LDM) UNet's input_blocks and output_blocks
    outputs, at the original indices: a level's layer ends with its attention (or its resnet
    without one), a down-sampler is a block of its own, and an up-sampler ends its level's last
    block. input_blocks[0] (conv_in) is None: it is never chosen."""
    inputs: list = [None]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            inputs.append(attentions[j] if attentions else resnet)
        if getattr(block, "downsamplers", None):
            inputs.append(block.downsamplers[0])
    outputs: list = []
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            last = j == len(block.resnets) - 1
            if last and getattr(block, "upsamplers", None):
                outputs.append(block.upsamplers[0])
            else:
                outputs.append(attentions[j] if attentions else resnet)
    return inputs, outputs


def adain_blocks(unet, sdxl: bool) -> list[tuple[object, float]]:
    """(module, threshold) for each block output AdaIN acts on: the unit's weight must be above
    the threshold. The blocks and thresholds are the extension's (input blocks 4, 5, 7, 8, 10, 11
    falling from 2, output blocks 0-7 rising from 0; SDXL: 4, 5, 7, 8 and 0-5), where the UNet has them."""
    inputs, outputs = _original_blocks(unet)
    chosen_inputs = (4, 5, 7, 8) if sdxl else (4, 5, 7, 8, 10, 11)
    chosen_outputs = tuple(range(6 if sdxl else 8))
    blocks = [(unet.mid_block, 0.0)]
    blocks += [(inputs[i], 2.0 * (1.0 - w / len(chosen_inputs)))
               for w, i in enumerate(chosen_inputs) if i < len(inputs)]
    blocks += [(outputs[i], 2.0 * w / len(chosen_outputs)) for w, i in enumerate(chosen_outputs) if i < len(outputs)]
    return blocks


def install(unet, state: ReferenceState) -> list[tuple[object, object]]:
    """Set the reference processors; returns (module, its processor) to put back."""
    blocks = self_attention_layers(unet)
    saved = []
    for rank, block in enumerate(blocks):
        original = block.attn1.processor
        saved.append((block.attn1, original))
        block.attn1.set_processor(ReferenceAttention(original, state, rank / len(blocks)))
    return saved


def uninstall(saved: list[tuple[object, object]]) -> None:
    for module, original in saved:
        module.set_processor(original)


def noised(latents: torch.Tensor, timestep: torch.Tensor, alphas_cumprod: torch.Tensor,
           generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """The reference latents at the timestep's noise level (q_sample), for the batch of `like`."""
    step = int(torch.as_tensor(timestep).float().reshape(-1)[0].round().clamp(0, len(alphas_cumprod) - 1))
    alpha = float(alphas_cumprod[step])
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    mixed = latents.float().cpu() * alpha ** 0.5 + noise * (1 - alpha) ** 0.5
    return mixed.to(like.device, like.dtype).expand(like.shape[0], -1, -1, -1)


@dataclass
class ReferenceUnit:
    """A reference_only unit ready for a job: its picture framed to the job and encoded."""
    index: int
    unit: object                # its ControlUnit
    detected: object            # the framed picture (the unit's map, returned with the pictures)
    latents: torch.Tensor       # its latents at the job's size (1, 4, h, w), on the CPU

    def latents_for(self, sample: torch.Tensor) -> torch.Tensor:
        if self.latents.shape[-2:] == sample.shape[-2:]:
            return self.latents
        return torch.nn.functional.interpolate(self.latents, size=sample.shape[-2:], mode="bilinear",
                                               align_corners=False)


def prepare(units, width: int, height: int, fallback_image, encode) -> list[ReferenceUnit]:
    """The reference units' pictures framed to width x height and encoded by `encode` ((1, 3, H, W)
    in [-1, 1] to latents). A unit without a picture takes img2img's, as other units do."""
    import numpy as np

    from engine import image_prep
    from engine.controlnet.apply import resize_mode_of
    from engine.errors import RequestError

    prepared = []
    for index, unit in units:
        picture = unit.image if unit.image is not None else fallback_image
        if picture is None:
            raise RequestError(f"ControlNet unit {index} ({unit.module}) is enabled but has no reference picture",
                               "image")
        framed = image_prep.resize_image(picture.convert("RGB"), resize_mode_of(unit.resize_mode), width, height)
        pixels = torch.from_numpy(np.asarray(framed, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        prepared.append(ReferenceUnit(index, unit, framed, encode(pixels).float().cpu()))
    return prepared


_RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual",
              "down_intrablock_additional_residuals")


def attached(unet, references: list[ReferenceUnit], cfg: bool, progress, alphas_cumprod: torch.Tensor,
             sdxl: bool, seed: int):
    """For the job: before each UNet call in an active unit's window, the write passes of the
    reference pictures; the call itself then reads what they kept. The noise the references are
    noised with comes from `seed`, so a job is made again the same."""
    import contextlib

    @contextlib.contextmanager
    def context():
        if not references:
            yield
            return
        state = ReferenceState()
        modules = {ref.unit.module.strip().lower() for ref in references}
        saved = install(unet, state) if modules & set(ATTENTION_MODULES) else []
        hooks = [block.register_forward_hook(AdainHook(state, threshold)) for block, threshold
                 in (adain_blocks(unet, sdxl) if modules & set(ADAIN_MODULES) else ())]
        generator = torch.Generator().manual_seed(int(seed))

        def write(module, args, kwargs):
            state.mode = None
            where = progress()
            active = [ref for ref in references if where is not None and ref.unit.weight > 0
                      and ref.unit.active_at(*where)]
            if not active:
                return None
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            rest = {key: value for key, value in kwargs.items() if key not in _RESIDUALS and key != "sample"}
            batch = sample.shape[0]
            state.negative_rows = slice(0, batch // 2) if cfg and batch % 2 == 0 else None
            for ref in active:
                latents = ref.latents_for(sample)
                hires = latents is not ref.latents
                state.mode, state.weight = "write", float(ref.unit.weight)
                module_name = ref.unit.module.strip().lower()
                state.attention, state.adain = module_name in ATTENTION_MODULES, module_name in ADAIN_MODULES
                state.fidelity = fidelity_for(ref.unit.threshold_a, ref.unit.control_mode, sdxl, hires)
                noisy = noised(latents, timestep, alphas_cumprod, generator, sample[:, :latents.shape[1]])
                if sample.shape[1] > latents.shape[1]:   # an inpainting UNet: an empty mask, the picture
                    picture = latents.to(noisy.device, noisy.dtype).expand(batch, -1, -1, -1)
                    noisy = torch.cat([noisy, torch.zeros_like(noisy[:, :1]), picture], dim=1)
                with torch.no_grad():   # forward, not __call__: the job's other UNet hooks stay out of it
                    module.forward(noisy, *args[1:], **rest) if args else module.forward(noisy, **rest)
            state.mode = "read"
            return None

        def read_done(module, args, kwargs, output):
            state.mode = None
            return None

        handles = [unet.register_forward_pre_hook(write, with_kwargs=True),
                   unet.register_forward_hook(read_done, with_kwargs=True)]
        try:
            yield
        finally:
            for handle in handles + hooks:
                handle.remove()
            uninstall(saved)

    return context()
