"""What sits beside an extra network's file, read the way AUTOMATIC1111's web UI reads it.

- The preview picture: `name.png`, `name.preview.png`, `name.jpg`, `name.preview.jpg`, then the
  same for `.jpeg` and `.webp` (A1111's order; model-site downloaders save `name.preview.png`).
- The user metadata `name.json` A1111's card editor writes: "description", "activation text",
  "preferred weight", "negative text", "sd version", "notes" (other keys are kept as they are).
- The `name.civitai.info` JSON that model-site helpers save (trainedWords, baseModel, ...).
- The safetensors header: its `__metadata__` (kohya's ss_* training keys, JSON-valued ones
  decoded as A1111 decodes them) and the tensors' names and shapes, never the weights.

A network's family ("sd1", "sd2", "sdxl", "flux", "sd3", the codes the loaded model carries) is
told from the user's "sd version", else the training metadata, else the tensors' names and widths.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from engine.families import lora_made_for

PREVIEW_SUFFIXES = tuple(f"{middle}.{ext}" for ext in ("png", "jpg", "jpeg", "webp") for middle in ("", ".preview"))
USER_KEYS = ("description", "activation text", "preferred weight", "negative text", "sd version", "notes")
# The "sd version" choices of A1111's editor, and ours for the flow families.
SD_VERSIONS = {"Unknown": None, "SD1": "sd1", "SD2": "sd2", "SDXL": "sdxl", "FLUX": "flux", "SD3": "sd3"}
FAMILY_NAMES = {code: name for name, code in SD_VERSIONS.items() if code}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on a header
MAX_SIDECAR_BYTES = 4 * 1024 * 1024   # a json / civitai.info beside a model is kilobytes
MAX_TEXT_CHARS = 20_000               # one field of the user metadata


def preview_of(stem_path: Path, names_here: set[str] | None = None) -> Path | None:
    """The preview picture of the network whose path without suffix is `stem_path`, or None.
    `names_here`: the file names in its folder when known (saves a stat per candidate)."""
    for suffix in PREVIEW_SUFFIXES:
        candidate = stem_path.with_name(stem_path.name + suffix)
        if (candidate.name in names_here) if names_here is not None else candidate.is_file():
            return candidate
    return None


def read_json_file(path: Path) -> dict:
    """A JSON object from a small file beside a model; {} when absent, too big or not an object."""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_safetensors_header(path: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """({tensor name: shape}, __metadata__) from a .safetensors header; ({}, {}) when unreadable."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                return {}, {}
            (length,) = struct.unpack("<Q", raw)
            if length > MAX_HEADER_BYTES:
                return {}, {}
            header = json.loads(handle.read(length).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}, {}
    if not isinstance(header, dict):
        return {}, {}
    metadata = header.pop("__metadata__", None)
    metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    shapes = {name: list(info.get("shape") or []) for name, info in header.items() if isinstance(info, dict)}
    return shapes, metadata


def decoded_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """The header metadata as A1111's API gives it: a value that reads as a JSON object
    (ss_tag_frequency, ss_dataset_dirs, ss_bucket_info, ...) decoded, every other kept as text."""
    decoded: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value[:1] == "{":
            try:
                decoded[key] = json.loads(value)
                continue
            except ValueError:
                pass
        decoded[key] = value
    return decoded


def family_from_metadata(metadata: dict[str, str]) -> str | None:
    """The family kohya's and the model spec's training keys name, or None."""
    base = (metadata.get("ss_base_model_version") or "").lower()
    architecture = (metadata.get("modelspec.architecture") or "").lower()
    for text in (base, architecture):
        if not text:
            continue
        if "flux" in text:
            return "flux"
        if text.startswith("sd3") or "stable-diffusion-3" in text:
            return "sd3"
        if "xl" in text:
            return "sdxl"
        if text.startswith("sd_v2") or "stable-diffusion-v2" in text:
            return "sd2"
        if text.startswith("sd_v1") or "stable-diffusion-v1" in text:
            return "sd1"
    if (metadata.get("ss_v2") or "").lower() == "true":
        return "sd2"
    model = (metadata.get("ss_sd_model_name") or "").lower()
    if "flux" in model:
        return "flux"
    if "xl" in model:
        return "sdxl"
    return None


# A UNet's cross-attention key/value layers take the text encoder's width: SD 1.x 768, SD 2.x
# 1024, SDXL 2048.
_CROSS_ATTENTION = re.compile(r"attn2[._]to_[kv]")
_DOWN_FACTORS = ("lora_down.weight", "lora_A.weight", "hada_w1_b", "lokr_w1_b", "lokr_w2_b", "lokr_w2")
_WIDTH_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def family_from_shapes(shapes: dict[str, list[int]]) -> str | None:
    """The family a LoRA's tensor names and widths say it was made for, or None."""
    names = list(shapes)
    made_for = lora_made_for(names)   # the flow families are told by their block names
    if made_for is not None and made_for != "sd":
        return made_for
    for name, shape in shapes.items():
        if _CROSS_ATTENTION.search(name) and name.endswith(_DOWN_FACTORS) and len(shape) == 2:
            family = _WIDTH_FAMILIES.get(int(shape[1]))
            if family:
                return family
    if any(n.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for n in names):
        return "sdxl"
    return None


def embedding_family(shapes: dict[str, list[int]]) -> str | None:
    """The family of a .safetensors embedding from its vectors' widths."""
    if "clip_g" in shapes:
        return "sdxl"
    for shape in shapes.values():
        if len(shape) == 2:
            return _WIDTH_FAMILIES.get(int(shape[1])) if int(shape[1]) != 2048 else None
    return None


def user_family(user: dict) -> tuple[bool, str | None]:
    """(whether the user's "sd version" decides, the family it names)."""
    version = user.get("sd version")
    if isinstance(version, str) and version in SD_VERSIONS and version != "Unknown":
        return True, SD_VERSIONS[version]
    return False, None


def preferred_weight(user: dict) -> float | None:
    """The user's "preferred weight", None when unset (A1111 writes 0 for unset)."""
    value = user.get("preferred weight")
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number and abs(number) < 1e6 else None


def civitai_words(civitai: dict) -> str:
    """The trigger words a civitai.info lists (trainedWords), joined as an activation text."""
    words = civitai.get("trainedWords")
    if not isinstance(words, list):
        return ""
    return ", ".join(str(word).strip() for word in words if str(word).strip())
