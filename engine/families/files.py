"""What a checkpoint file holds, in the words every family's recognition uses (see
engine/families/__init__.py): the parts of a flow-matching model's setup (its transformer, the
text encoders, the VAE), which of them a single file includes, and what the user must pick beside
it. The loader (engine/models/flow_pipelines.py) takes the missing parts from the files picked in
models/text_encoder and models/VAE.

Facts used (the key names the publishers' files carry): the text encoders inside an all-in-one
file sit under `text_encoders.clip_l.`, `text_encoders.clip_g.` and `text_encoders.t5xxl.`, the
VAE under `vae.` or `first_stage_model.`; a text encoder or VAE file on its own has T5's
`encoder.block.N...`, CLIP's `text_model.encoder.layers.N...` or the VAE's `decoder.conv_in`.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import CheckpointError

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "")

CLIP_L, CLIP_G, T5 = "CLIP-L", "CLIP-G", "T5-XXL"
TEXT_ENCODER_PREFIXES = {CLIP_L: "text_encoders.clip_l.", CLIP_G: "text_encoders.clip_g.",
                         T5: "text_encoders.t5xxl."}
VAE_KEYS = ("vae.decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight")
VAE = "VAE"   # the part a missing VAE is, beside the text encoders' names

# Parts of a FLUX / SD 3 setup that users put beside their checkpoints: key -> what it is, by the
# width of the tensor (a CLIP text tower's q projection: 768 for CLIP-L, 1280 for CLIP-G).
T5_ENCODER_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
CLIP_Q_KEY = "text_model.encoder.layers.0.self_attn.q_proj.weight"
VAE_DECODER_IN = "decoder.conv_in.weight"


@dataclass(frozen=True)
class FlowModelFile:
    """What a flow-matching checkpoint (FLUX.1, SD 3.x) holds."""

    family: str                           # the family's name ("flux", "sd3")
    variant: str                          # "FLUX.1-dev", "SD 3.5 Large", ...
    config_name: str | None               # its folder under model_configs/, None: none kept yet
    text_encoders: tuple[str, ...] = ()   # the text encoders the file includes
    has_vae: bool = False
    folder: bool = False                  # a diffusers folder (every part in it)
    needed_text_encoders: tuple[str, ...] = ()   # what the variant is prompted with
    vae_name: str = "the VAE"             # how the missing VAE is named to the user

    @property
    def missing(self) -> tuple[str, ...]:
        if self.folder:
            return ()
        parts = tuple(name for name in self.needed_text_encoders if name not in self.text_encoders)
        return parts + (() if self.has_vae else (self.vae_name,))

    @property
    def missing_parts(self) -> tuple[str, ...]:
        """What `missing` names, as parts: CLIP_L, CLIP_G, T5 and VAE."""
        return tuple(VAE if name == self.vae_name else name for name in self.missing)

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
        from engine.families import supported_flow_variants   # the registry imports this module

        supported = _join(list(supported_flow_variants()))
        return CheckpointError(
            f"'{name}' is {self.describe()}. {self.variant} models are not supported yet in this version "
            f"of SD Studio ({supported} are); the model stays in the checkpoint list and the current model "
            "stays loaded.", "checkpoint")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def transformer_prefix(shapes: dict, marker: str) -> str | None:
    """The prefix a file's transformer keys carry (bare or `model.diffusion_model.`), found by a
    key only that family's transformer has; None: not that family's."""
    return next((prefix for prefix in TRANSFORMER_PREFIXES if prefix + marker in shapes), None)


def included_parts(shapes: dict) -> tuple[tuple[str, ...], bool]:
    """(the text encoders a single file includes, whether it includes a VAE)."""
    text_encoders = tuple(name for name, prefix in TEXT_ENCODER_PREFIXES.items()
                          if any(key.startswith(prefix) for key in shapes))
    return text_encoders, any(key in shapes for key in VAE_KEYS)


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
