"""File and folder names from the user's patterns: `[seed]-[prompt_spaces]`, `[date]`, ...

A name is built from values the user does not control character by character (a prompt pasted
from anywhere), so whatever comes out is made safe as one path component on every platform:
no separators, no `..`, no control characters, nothing Windows refuses, and a bounded length.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

NAME_CHARS = 128   # the longest name part (without the number and the extension)
NAME_BYTES = 180   # and in UTF-8, so NNNNN-name.webp stays well under the usual 255-byte limit
PROMPT_WORDS = 8   # [prompt_words] keeps this many words

_TAG = re.compile(r"\[([A-Za-z_]+)(?:<([^>\]]*)>)?\]")
_FORBIDDEN = re.compile(r'[/\\:*?"<>|]')           # separators, and what Windows refuses
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_WORDS = re.compile(r"[^\W_]+")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


@dataclass(frozen=True)
class ImageFields:
    """What a saved image's name may tell: the values behind the pattern tags."""

    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = ""
    styles: tuple[str, ...] = ()
    model_name: str = ""
    model_hash: str = ""
    sampler: str = ""
    steps: int | None = None
    cfg: float | None = None
    width: int | None = None
    height: int | None = None
    job_timestamp: str = ""

    @classmethod
    def of(cls, request, model_info, seed: int, image=None, prompt: str | None = None,
           negative_prompt: str | None = None, job_timestamp: str = "") -> "ImageFields":
        """From a job's request and checkpoint; the size is the picture's own when given
        (hires fix and upscaling make it differ from the request's)."""
        width, height = image.size if image is not None else (request.width, request.height)
        return cls(seed=seed, prompt=request.prompt if prompt is None else prompt,
                   negative_prompt=request.negative_prompt if negative_prompt is None else negative_prompt,
                   styles=tuple(request.styles), model_name=model_info.model_name if model_info else "",
                   model_hash=(model_info.short_hash or "") if model_info else "",
                   sampler=request.sampler_name, steps=request.steps, cfg=request.cfg_scale,
                   width=width, height=height, job_timestamp=job_timestamp)

    def tags(self, now: dt.datetime) -> dict[str, Any]:
        """Tag name -> value, or a function of the tag's `<argument>` (a strftime format)."""
        words = _WORDS.findall(self.prompt)[:PROMPT_WORDS] or ["empty"]
        return {
            "seed": self.seed,
            "prompt": self.prompt.replace(" ", "_"),
            "prompt_spaces": self.prompt,
            "prompt_words": " ".join(words),
            "negative_prompt": self.negative_prompt,
            "styles": ", ".join(self.styles) or "None",
            "model_name": self.model_name,
            "model_hash": self.model_hash,
            "sampler": self.sampler,
            "steps": self.steps,
            "cfg": None if self.cfg is None else float(self.cfg),
            "width": self.width,
            "height": self.height,
            "date": lambda fmt: now.strftime(fmt or "%Y-%m-%d"),
            "datetime": lambda fmt: now.strftime(fmt or "%Y%m%d%H%M%S"),
            "job_timestamp": self.job_timestamp or now.strftime("%Y%m%d%H%M%S"),
        }


def expand(pattern: str, fields: ImageFields, now: dt.datetime | None = None) -> str:
    """The pattern with its tags replaced (not yet made safe: see `safe_name`). Unknown tags are
    left as typed, so a typo shows in the file name instead of vanishing."""
    values = fields.tags(now or dt.datetime.now())

    def replace(match: re.Match) -> str:
        name, argument = match.group(1).lower(), match.group(2)
        if name not in values:
            return match.group(0)
        value = values[name]
        if callable(value):
            try:
                value = value(argument)
            except ValueError:  # a strftime format the platform refuses
                return match.group(0)
        return "" if value is None else str(value)

    return _TAG.sub(replace, pattern)


def safe_name(text: str, limit: int = NAME_CHARS) -> str:
    """`text` as one safe path component (may be empty)."""
    text = _CONTROL.sub(" ", text)
    text = _FORBIDDEN.sub("_", text)
    text = re.sub(r"\.{2,}", ".", text)   # no `..` anywhere, even where it would be harmless
    text = re.sub(r"\s+", " ", text)
    text = text[:limit]
    while len(text.encode("utf-8")) > NAME_BYTES:
        text = text[:-1]
    # Windows drops trailing dots and spaces; a leading dot hides the file elsewhere.
    text = text.strip(" .")
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = f"_{text}"
    return text
