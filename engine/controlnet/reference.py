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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MODULE = "reference_only"


@dataclass
class Bank:
    """What one self-attention layer kept in the write pass(es) of a step."""
    states: list = field(default_factory=list)
    fidelities: list = field(default_factory=list)


class ReferenceState:
    """The mode the layers are in: None (plain), "write" or "read", with the write's settings."""

    def __init__(self) -> None:
        self.mode: str | None = None
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
            if state.weight > self.rank:
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
            raise RequestError(f"ControlNet unit {index} ({MODULE}) is enabled but has no reference picture",
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
        saved = install(unet, state)
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
            for handle in handles:
                handle.remove()
            uninstall(saved)

    return context()
