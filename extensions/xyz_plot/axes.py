"""The X/Y/Z plot's axes: A1111 1.10.1's list, in its order (an API client's axis type is an index
into it, filtered for the tab), and what each does to one cell's job here.

A cell's job is a `CellJob`: the request (plain data from engine.request), settings for that job
only, and the checkpoint it is made with. Each axis changes one of those. Axes whose feature
this app lacks keep their place, so the indices stay A1111's, and are refused by name."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from engine.errors import NotFoundError, RequestError
from engine.request import (
    DEFAULT_REFINER_SWITCH_AT,
    MAX_CLIP_SKIP,
    MAX_STEPS,
    RANDN_SOURCES,
    REFINER_SWITCH_RANGE,
    RefinerChoice,
)

if TYPE_CHECKING:
    from engine.extensions.script import Catalog
    from engine.request import GenerationRequest

TXT2IMG, IMG2IMG = "txt2img", "img2img"
BOTH = (TXT2IMG, IMG2IMG)
HIRES = "hires_fix"
FACES = "restore_faces"
SAME_SAMPLER = "Use same sampler"


@dataclass
class CellJob:
    """One cell's job as the axes make it: `host.process(request, settings=..., checkpoint=...)`."""

    request: "GenerationRequest"
    settings: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    # A "Refiner switch at" axis's value, kept for a refiner another axis may choose.
    refiner_switch_at: float | None = None

    def change(self, **fields: Any) -> None:
        self.request = self.request.replace(**fields)

    def change_img2img(self, **fields: Any) -> None:
        """Fields of the request's img2img part (an img2img job's)."""
        self.request = self.request.with_img2img(**fields)

    def extension_option(self, extension: str, name: str, value: Any) -> None:
        """One option of an always-on extension (hires fix, restore faces) for this job."""
        extensions = {key: dict(options) for key, options in self.request.extensions.items()}
        extensions.setdefault(extension, {})[name] = value
        self.change(extensions=extensions)


Apply = Callable[[CellJob, Any, Sequence[Any]], None]
Confirm = Callable[[list, "GenerationRequest", "Catalog"], list]


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str                       # "nothing", "int", "float", "text" or "permutations"
    apply: Apply | None = None
    modes: tuple[str, ...] = BOTH
    cost: float = 0.0               # the costliest axis is the outermost loop (fewer model loads)
    choices: Callable[["Catalog"], list[str]] | None = None  # values offered as a list
    confirm: Confirm | None = None  # checks all values before the first cell; returns them canonical
    legend: str = "labelled"        # "labelled" (Label: value), "value", "basename", "joined", "none"
    bounds: tuple[float, float] | None = None
    missing: str = ""               # this app lacks the feature: refused, with this said
    seeds: bool = False             # -1 is a random seed, fixed before the first cell
    reads_prompt: bool = False      # its check needs the job's prompt (not known to the UI's estimate)

    @property
    def supported(self) -> bool:
        return not self.missing

    def legend_text(self, value: Any) -> str:
        if self.legend == "none":
            return ""
        if self.legend == "joined":
            return ", ".join(value)
        if isinstance(value, float):
            value = round(value, 8)
        if self.legend == "basename":
            return os.path.basename(str(value))
        if self.legend == "value":
            return str(value)
        return f"{self.label}: {value}"


# Applying values ------------------------------------------------------------------------------

def set_field(name: str) -> Apply:
    def apply(cell: CellJob, value: Any, values: Sequence[Any]) -> None:
        cell.change(**{name: value})
    return apply


def set_img2img_field(name: str) -> Apply:
    def apply(cell: CellJob, value: Any, values: Sequence[Any]) -> None:
        cell.change_img2img(**{name: value})
    return apply


def set_setting(name: str) -> Apply:
    def apply(cell: CellJob, value: Any, values: Sequence[Any]) -> None:
        cell.settings[name] = value
    return apply


def set_option(extension: str, name: str) -> Apply:
    def apply(cell: CellJob, value: Any, values: Sequence[Any]) -> None:
        cell.extension_option(extension, name, value)
    return apply


def set_denoising(cell: CellJob, value: float, values: Sequence[Any]) -> None:
    # In txt2img A1111's denoising strength is the hires pass's.
    if cell.request.mode == TXT2IMG:
        cell.extension_option(HIRES, "denoising_strength", value)
    else:
        cell.change_img2img(denoising_strength=value)


def replace_in_prompts(cell: CellJob, value: str, values: Sequence[Any]) -> None:
    searched = values[0]
    cell.change(prompt=cell.request.prompt.replace(searched, value),
                negative_prompt=cell.request.negative_prompt.replace(searched, value))


def reorder_prompt(prompt: str, order: Sequence[str]) -> str:
    """The prompt with the listed tokens put, in `order`, into the places where they stand."""
    slots = sorted(order, key=prompt.find)
    pieces, rest = [], prompt
    for token in slots:
        at = rest.find(token)
        pieces.append(rest[:at])
        rest = rest[at + len(token):]
    return "".join(piece + token for piece, token in zip(pieces, order)) + rest


def set_order(cell: CellJob, value: tuple[str, ...], values: Sequence[Any]) -> None:
    cell.change(prompt=reorder_prompt(cell.request.prompt, value))


def set_checkpoint(cell: CellJob, value: str, values: Sequence[Any]) -> None:
    cell.checkpoint = value


def add_styles(cell: CellJob, value: str, values: Sequence[Any]) -> None:
    cell.change(styles=tuple(cell.request.styles) + tuple(_style_names(value)))


def set_unipc_order(cell: CellJob, value: int, values: Sequence[Any]) -> None:
    # As A1111: below the number of steps (and at least 1, the setting's least).
    cell.settings["uni_pc_order"] = max(1, min(value, cell.request.steps - 1))


def set_face_restore(cell: CellJob, value: str, values: Sequence[Any]) -> None:
    if value in ("True", "False"):
        cell.extension_option(FACES, "enabled", value == "True")
    else:  # a restorer's name
        cell.extension_option(FACES, "enabled", True)
        cell.extension_option(FACES, "restorer", value)


def set_size(cell: CellJob, value: str, values: Sequence[Any]) -> None:
    width, height = parse_size(value)
    cell.change(width=width, height=height)


def set_refiner_checkpoint(cell: CellJob, value: str, values: Sequence[Any]) -> None:
    if value == "None":
        cell.change(refiner=None)
        return
    switch_at = cell.refiner_switch_at
    if switch_at is None:
        switch_at = cell.request.refiner.switch_at if cell.request.refiner else DEFAULT_REFINER_SWITCH_AT
    cell.change(refiner=RefinerChoice(value, switch_at))


def set_refiner_switch_at(cell: CellJob, value: float, values: Sequence[Any]) -> None:
    # As A1111: the switch point of the job's refiner; without one it changes nothing.
    cell.refiner_switch_at = value
    if cell.request.refiner is not None:
        cell.change(refiner=cell.request.refiner.replace(switch_at=value))


def set_bool_setting(name: str) -> Apply:
    def apply(cell: CellJob, value: str, values: Sequence[Any]) -> None:
        cell.settings[name] = value == "True"
    return apply


# Checking values ------------------------------------------------------------------------------

def pick(value: str, choices: Sequence[str], what: str) -> str:
    """The listed name `value` stands for (any case), or NotFoundError naming the choices."""
    for choice in choices:
        if choice == value:
            return choice
    folded = [choice for choice in choices if choice.casefold() == str(value).strip().casefold()]
    if folded:
        return folded[0]
    raise NotFoundError(f"unknown {what} '{value}'. Choose from: {', '.join(choices) or 'none'}", "script_args")


def picking(what: str, choices: Callable[["Catalog"], list[str]]) -> Confirm:
    def confirm(values: list, request, catalog) -> list:
        listed = choices(catalog)
        return [pick(value, listed, what) for value in values]
    return confirm


def confirm_checkpoints(values: list, request, catalog) -> list:
    return [catalog.find_checkpoint(value) for value in values]


def confirm_refiners(values: list, request, catalog) -> list:
    return ["None" if value.strip() in ("", "None") else catalog.find_checkpoint(value) for value in values]


def vae_choices(catalog) -> list[str]:
    return catalog.vae_names()


def confirm_vaes(values: list, request, catalog) -> list:
    out = []
    for value in values:
        if value.strip().lower() in ("auto", "automatic"):
            value = "Automatic"
        out.append(pick(value, vae_choices(catalog), "VAE"))
    return out


def _style_names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def confirm_styles(values: list, request, catalog) -> list:
    known = catalog.style_names()
    return [",".join(pick(name, known, "style") for name in _style_names(value)) for value in values]


def hires_upscaler_choices(catalog) -> list[str]:
    return [*catalog.latent_upscale_modes(), *catalog.upscaler_names()]


def confirm_hires_upscalers(values: list, request, catalog) -> list:
    listed = hires_upscaler_choices(catalog)
    out = []
    for value in values:
        try:
            out.append(pick(value, listed, "upscaler"))
        except NotFoundError:
            out.append(catalog.check_upscaler(value))  # a standard model's file name, or refused
    return out


def hires_sampler_choices(catalog) -> list[str]:
    return catalog.sampler_names()


def confirm_hires_samplers(values: list, request, catalog) -> list:
    return [SAME_SAMPLER if value.strip().lower() == SAME_SAMPLER.lower()
            else pick(value, catalog.sampler_names(), "sampler") for value in values]


def confirm_search_replace(values: list, request, catalog) -> list:
    if values and values[0] not in request.prompt and values[0] not in request.negative_prompt:
        raise RequestError(f"Prompt S/R did not find '{values[0]}' in the prompt or the negative prompt "
                           "(the first value is the text searched for)", "script_args")
    return values


def confirm_order(values: list, request, catalog) -> list:
    for token in (values[0] if values else ()):
        if token not in request.prompt:
            raise RequestError(f"Prompt order: '{token}' is not in the prompt", "script_args")
    return values


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "y", "1", "on"), ("false", "no", "n", "0", "off")


def face_restore_choices(catalog) -> list[str]:
    return ["True", "False", *catalog.face_restorers()]


def confirm_face_restore(values: list, request, catalog) -> list:
    out = []
    for value in values:
        word = value.strip().lower()
        if word in TRUE_WORDS:
            out.append("True")
        elif word in FALSE_WORDS:
            out.append("False")
        else:
            name = pick(value, catalog.face_restorers(), "face restorer (or true / false)")
            catalog.check_face_restorer(name)  # one whose weights are missing is refused now
            out.append(name)
    return out


def boolean_choices(catalog) -> list[str]:
    return ["False", "True"]


def confirm_booleans(values: list, request, catalog) -> list:
    return [pick(value, ["False", "True"], "value (true or false)") for value in values]


def parse_size(value: str) -> tuple[int, int]:
    width, separator, height = str(value).lower().partition("x")
    try:
        if not separator:
            raise ValueError
        return int(width.strip()), int(height.strip())
    except ValueError:
        raise RequestError(f"Size '{value}' is not of the form WIDTHxHEIGHT (e.g. 512x768)", "script_args") from None


def confirm_sizes(values: list, request, catalog) -> list:
    for value in values:
        parse_size(value)
    return [value.strip() for value in values]


def confirm_rng(values: list, request, catalog) -> list:
    return [pick(value, list(RANDN_SOURCES), "RNG source") for value in values]


def _missing(label: str, kind: str, what: str, modes: tuple[str, ...] = BOTH, cost: float = 0.0) -> Axis:
    return Axis(label, kind, modes=modes, cost=cost, missing=what)


# The table ------------------------------------------------------------------------------------

AXES: tuple[Axis, ...] = (
    Axis("Nothing", "nothing", legend="none"),
    Axis("Seed", "int", set_field("seed"), seeds=True),
    Axis("Var. seed", "int", set_field("subseed"), seeds=True),
    Axis("Var. strength", "float", set_field("subseed_strength")),
    Axis("Steps", "int", set_field("steps")),
    Axis("Hires steps", "int", set_option(HIRES, "steps"), modes=(TXT2IMG,), bounds=(0, MAX_STEPS)),
    Axis("CFG Scale", "float", set_field("cfg_scale")),
    Axis("Image CFG Scale", "float", set_img2img_field("image_cfg_scale"), modes=(IMG2IMG,)),
    Axis("Prompt S/R", "text", replace_in_prompts, confirm=confirm_search_replace, legend="value",
         reads_prompt=True),
    Axis("Prompt order", "permutations", set_order, confirm=confirm_order, legend="joined", reads_prompt=True),
    Axis("Sampler", "text", set_field("sampler_name"), modes=(TXT2IMG,), legend="value",
         choices=lambda catalog: catalog.sampler_names(), confirm=picking("sampler", lambda c: c.sampler_names())),
    Axis("Hires sampler", "text", set_option(HIRES, "sampler"), modes=(TXT2IMG,),
         choices=hires_sampler_choices, confirm=confirm_hires_samplers),
    Axis("Sampler", "text", set_field("sampler_name"), modes=(IMG2IMG,), legend="value",
         choices=lambda catalog: catalog.sampler_names(), confirm=picking("sampler", lambda c: c.sampler_names())),
    Axis("Checkpoint name", "text", set_checkpoint, cost=1.0, legend="basename",
         choices=lambda catalog: catalog.checkpoint_titles(), confirm=confirm_checkpoints),
    Axis("Negative Guidance minimum sigma", "float", set_field("s_min_uncond")),
    Axis("Sigma Churn", "float", set_field("s_churn")),
    Axis("Sigma min", "float", set_field("s_tmin")),
    Axis("Sigma max", "float", set_field("s_tmax")),
    Axis("Sigma noise", "float", set_field("s_noise")),
    Axis("Schedule type", "text", set_field("scheduler"), choices=lambda catalog: catalog.schedule_types(),
         confirm=picking("schedule type", lambda c: c.schedule_types())),
    Axis("Schedule min sigma", "float", set_setting("sigma_min"), bounds=(0.0, 100.0)),
    Axis("Schedule max sigma", "float", set_setting("sigma_max"), bounds=(0.0, 1000.0)),
    Axis("Schedule rho", "float", set_setting("rho"), bounds=(0.0, 100.0)),
    Axis("Beta schedule alpha", "float", set_setting("beta_dist_alpha"), bounds=(0.01, 1.0)),
    Axis("Beta schedule beta", "float", set_setting("beta_dist_beta"), bounds=(0.01, 1.0)),
    Axis("Eta", "float", set_field("eta")),
    Axis("Clip skip", "int", set_field("clip_skip"), bounds=(1, MAX_CLIP_SKIP)),
    Axis("Denoising", "float", set_denoising, bounds=(0.0, 1.0)),
    Axis("Initial noise multiplier", "float", set_field("initial_noise_multiplier")),
    Axis("Extra noise", "float", set_setting("img2img_extra_noise"), bounds=(0.0, 1.0)),
    Axis("Hires upscaler", "text", set_option(HIRES, "upscaler"), modes=(TXT2IMG,),
         choices=hires_upscaler_choices, confirm=confirm_hires_upscalers),
    _missing("Cond. Image Mask Weight", "float", "the conditioning mask weight of inpainting models",
             modes=(IMG2IMG,)),
    Axis("VAE", "text", set_field("vae"), cost=0.7, choices=vae_choices, confirm=confirm_vaes),
    Axis("Styles", "text", add_styles, choices=lambda catalog: catalog.style_names(), confirm=confirm_styles),
    Axis("UniPC Order", "int", set_unipc_order, cost=0.5, bounds=(1, 50)),
    Axis("Face restore", "text", set_face_restore, legend="value", confirm=confirm_face_restore),
    _missing("Token merging ratio", "float", "token merging"),
    _missing("Token merging ratio high-res", "float", "token merging"),
    Axis("Always discard next-to-last sigma", "text", set_bool_setting("always_discard_next_to_last_sigma"),
         choices=boolean_choices, confirm=confirm_booleans),
    Axis("SGM noise multiplier", "text", set_bool_setting("sgm_noise_multiplier"),
         choices=boolean_choices, confirm=confirm_booleans),
    Axis("Refiner checkpoint", "text", set_refiner_checkpoint, cost=1.0, legend="basename",
         choices=lambda catalog: ["None", *catalog.checkpoint_titles()], confirm=confirm_refiners),
    Axis("Refiner switch at", "float", set_refiner_switch_at, bounds=REFINER_SWITCH_RANGE),
    Axis("RNG source", "text", set_field("randn_source"), choices=lambda catalog: list(RANDN_SOURCES),
         confirm=confirm_rng),
    _missing("FP8 mode", "text", "FP8 weight storage", cost=0.9),
    Axis("Size", "text", set_size, confirm=confirm_sizes),
    # Forge's axes for FLUX.1 / SD 3.x (after A1111's, so its API indexes stay as they are).
    Axis("Distilled CFG Scale", "float", set_field("distilled_cfg_scale"), bounds=(0.0, 30.0)),
    Axis("Shift", "float", set_field("shift"), bounds=(0.0, 100.0)),
)


def axes_for(mode: str) -> tuple[Axis, ...]:
    """The axes the tab offers, in A1111's order (an API axis type indexes this)."""
    return tuple(axis for axis in AXES if mode in axis.modes)


def labels_for(mode: str) -> tuple[str, ...]:
    return tuple(axis.label for axis in axes_for(mode))


def missing_labels() -> list[str]:
    return [axis.label for axis in AXES if not axis.supported]


def find_axis(mode: str, wanted: Any, which: str = "X") -> Axis:
    """The axis an option names: its label (any case) or, as A1111's API sends it, its index in
    the tab's list."""
    axes = axes_for(mode)
    if isinstance(wanted, bool):
        raise RequestError(f"X/Y/Z plot: {which} type must be an axis name or index, got {wanted!r}", "script_args")
    if isinstance(wanted, int) or (isinstance(wanted, float) and wanted.is_integer()):
        index = int(wanted)
        if not 0 <= index < len(axes):
            raise RequestError(f"X/Y/Z plot: {which} type {index} is not an axis of {mode} (0 to {len(axes) - 1})",
                               "script_args")
        return axes[index]
    if isinstance(wanted, str):
        text = wanted.strip()
        if text.isdigit():
            return find_axis(mode, int(text), which)
        for axis in axes:
            if axis.label.casefold() == text.casefold():
                return axis
    raise NotFoundError(f"X/Y/Z plot: unknown {which} type {wanted!r} for {mode}. Axes: "
                        f"{', '.join(labels_for(mode))}", "script_args")


def describe_choices(axis: Axis, catalog: "Catalog") -> list[str] | None:
    """The values an axis offers as a list (for a values dropdown), or None."""
    return list(axis.choices(catalog)) if axis.choices is not None else None
