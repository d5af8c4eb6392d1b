"""Infotext: the generation parameters written into every image, in the ecosystem's format.

    a cat, (masterpiece:1.2)
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512, ...

Writing and reading live together so what we write always reads back.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from engine.image_prep import INPAINT_AREAS, MASK_MODES, MASKED_CONTENT, RESIZE_MODES

# The order keys appear in (COMPAT.md); keys not listed follow, in the order given, then Version.
KEY_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration",
    "Size", "Model hash", "Model", "VAE hash", "VAE", "Variation seed", "Variation seed strength",
    "Seed resize from", "Denoising strength", "Clip skip", "RNG", "Tiling",
)
NEGATIVE_PREFIX = "Negative prompt:"
# The PNG text chunk (and EXIF field name) the ecosystem stores infotext under.
INFOTEXT_KEY = "parameters"

# One "Key: value" pair: a key of words, then a JSON-quoted value or anything up to the next comma.
_PAIR = re.compile(r'\s*([\w][\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        text = f"{value:g}" if value == value else "nan"
        return text
    text = str(value)
    if any(ch in text for ch in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def build(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """The infotext for one image. Parameters whose value is None are left out."""
    ordered = [k for k in KEY_ORDER if k in params]
    ordered += [k for k in params if k not in KEY_ORDER and k != "Version"]
    if "Version" in params:
        ordered.append("Version")
    pairs = ", ".join(f"{k}: {format_value(params[k])}" for k in ordered if params[k] is not None)
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    lines.append(pairs)
    return "\n".join(lines)


def parse_pairs(line: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    position = 0
    line = line.strip()
    while position < len(line):
        match = _PAIR.match(line, position)
        if not match or match.end() == position:
            break
        key, value = match.group(1).strip(), match.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        pairs[key] = value
        position = match.end()
    return pairs


def parse(text: str) -> tuple[str, str, dict[str, str]]:
    """Split an infotext into (prompt, negative prompt, {key: value}).

    The last line counts as parameters only if it holds at least three `Key: value` pairs, as
    readers in the ecosystem do; otherwise everything is prompt.
    """
    lines = (text or "").strip().split("\n")
    params: dict[str, str] = {}
    if lines:
        candidate = parse_pairs(lines[-1])
        if len(candidate) >= 3:
            params = candidate
            lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].lstrip(" ")
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), params


def fields_table(text: str) -> dict[str, str]:
    """Every field of an infotext by its name, prompts first (what PNG Info shows)."""
    prompt, negative, params = parse(text)
    return {"Prompt": prompt, "Negative prompt": negative, **params}


def request_fields(text: str) -> dict[str, Any]:
    """The request fields an infotext describes (what "send to txt2img" and `infotext` fill in)."""
    prompt, negative, params = parse(text)
    fields: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    simple = {
        "Steps": ("steps", int), "Sampler": ("sampler_name", str), "Schedule type": ("scheduler", str),
        "CFG scale": ("cfg_scale", float), "Seed": ("seed", int), "Variation seed": ("subseed", int),
        # The A1111 extension's key for rescaled guidance, and Forge's.
        "CFG Rescale": ("cfg_rescale", float), "Rescale CFG": ("cfg_rescale", float),
        "Noise Schedule": ("noise_schedule", str),
        # Forge's keys for FLUX.1-dev's guidance input and the flow shift.
        "Distilled CFG Scale": ("distilled_cfg_scale", float), "Shift": ("shift", float),
        "Variation seed strength": ("subseed_strength", float),
        "Clip skip": ("clip_skip", int), "Emphasis": ("emphasis", str), "RNG": ("randn_source", str),
        "Denoising strength": ("denoising_strength", float), "Mask blur": ("mask_blur", int),
        "Masked area padding": ("inpaint_full_res_padding", int),
        "Noise multiplier": ("initial_noise_multiplier", float),
        "Masked content": ("inpainting_fill", MASKED_CONTENT.index),
        "Resize mode": ("resize_mode", RESIZE_MODES.index),
        "Inpaint area": ("inpaint_full_res", lambda v: bool(INPAINT_AREAS.index(v))),
        "Mask mode": ("inpainting_mask_invert", lambda v: bool(MASK_MODES.index(v))),
        "Refiner": ("refiner_checkpoint", str), "Refiner switch at": ("refiner_switch_at", float),
    }
    for key, (name, kind) in simple.items():
        if key in params:
            try:
                fields[name] = kind(params[key])
            except ValueError:
                pass
    if "Seed" in params and "RNG" not in params:
        # A1111 writes no RNG key for its default source, the GPU's generator: such a picture is
        # made again only with that source.
        fields["randn_source"] = "GPU"
    for key, names in (("Size", ("width", "height")),
                       ("Seed resize from", ("seed_resize_from_w", "seed_resize_from_h"))):
        size = _size(params.get(key))
        if size:
            fields[names[0]], fields[names[1]] = size
    if "Model hash" in params:
        fields["model_hash"] = params["Model hash"]
    if "Model" in params:
        fields["model_name"] = params["Model"]
    # Forge's "Module 1: ae, Module 2: clip_l, ...": the VAE / text encoder files, in order.
    modules, index = [], 1
    while f"Module {index}" in params:
        modules.append(params[f"Module {index}"])
        index += 1
    if modules:
        fields["modules"] = tuple(modules)
    return fields


def _size(value: str | None) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)x(\d+)\s*", value or "")
    return (int(match.group(1)), int(match.group(2))) if match else None
