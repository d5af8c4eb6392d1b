"""What a merge is asked for and what it gives back: the Checkpoint Merger tab's and
POST /sdapi/v1/merge-checkpoints' fields (A1111's names), checked before any file is read, and the
result (engine/merge/checkpoint_merger.py does the merge)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import regex

from engine.errors import RequestError, UserError
from engine.models.registry import CheckpointInfo

WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION = "Weighted sum", "Add difference", "No interpolation"
INTERP_METHODS = (WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION)
# A1111's "Copy config from" choices (its UI sends their index).
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
NO_VAE = "None"
MULTIPLIER_RANGE = (0.0, 1.0)
MAX_CUSTOM_NAME = 200
MAX_DISCARD_PATTERN = 1000
DISCARD_MATCH_SECONDS = 0.1   # per weight name: a sane pattern needs microseconds
NAME_FORBIDDEN = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


class MergeBusyError(UserError):
    """Another merge is running: one at a time (each reads and writes whole models)."""

    status = 409


class MergeWriteError(UserError):
    """The result could not be written (the disk is full, the folder read-only): the request was
    fine, the server lacks the room (507, as for running out of memory)."""

    status = 507


@dataclass(frozen=True)
class MergeRequest:
    """What the Checkpoint Merger tab and POST /sdapi/v1/merge-checkpoints ask for (A1111's names)."""

    primary_model_name: str
    secondary_model_name: str = ""
    tertiary_model_name: str = ""
    interp_method: str = WEIGHTED_SUM
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    config_source: str = CONFIG_SOURCES[0]
    bake_in_vae: str = NO_VAE
    discard_weights: str = ""
    overwrite: bool = False

    def checked(self) -> MergeRequest:
        if self.interp_method not in INTERP_METHODS:
            raise RequestError(f"interp_method must be one of {', '.join(INTERP_METHODS)}; got "
                               f"'{str(self.interp_method)[:60]}'", "interp_method")
        low, high = MULTIPLIER_RANGE
        if not isinstance(self.multiplier, (int, float)) or isinstance(self.multiplier, bool) \
                or not math.isfinite(self.multiplier) or not low <= self.multiplier <= high:
            raise RequestError(f"multiplier must be a number from {low:g} to {high:g}", "multiplier")
        if not (self.primary_model_name or "").strip():
            raise RequestError("primary_model_name: choose the primary model (A)", "primary_model_name")
        if self.interp_method != NO_INTERPOLATION and not (self.secondary_model_name or "").strip():
            raise RequestError(f"{self.interp_method} needs a secondary model (B): set secondary_model_name",
                               "secondary_model_name")
        if self.interp_method == ADD_DIFFERENCE and not (self.tertiary_model_name or "").strip():
            raise RequestError("Add difference needs a tertiary model (C): set tertiary_model_name",
                               "tertiary_model_name")
        config = config_source_name(self.config_source)
        if len(self.discard_weights or "") > MAX_DISCARD_PATTERN:
            raise RequestError(f"discard_weights is longer than {MAX_DISCARD_PATTERN} characters", "discard_weights")
        discard_pattern(self.discard_weights)
        check_custom_name(self.custom_name)
        return MergeRequest(self.primary_model_name.strip(), (self.secondary_model_name or "").strip(),
                            (self.tertiary_model_name or "").strip(), self.interp_method, float(self.multiplier),
                            bool(self.save_as_half), (self.custom_name or "").strip(), config,
                            (self.bake_in_vae or NO_VAE).strip() or NO_VAE, self.discard_weights or "",
                            bool(self.overwrite))


@dataclass
class MergeResult:
    path: Path
    checkpoint: CheckpointInfo   # as the registry lists it now (title with hash)
    info: str                    # what was done, for the user
    tensors: int
    kept_from_a: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    baked: int = 0
    is_inpainting: bool = False
    is_instruct_pix2pix: bool = False


def config_source_name(value) -> str:
    """A1111's choice by label, or by its index (what its UI sends)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CONFIG_SOURCES):
        return CONFIG_SOURCES[value]
    if isinstance(value, str) and value.strip() in CONFIG_SOURCES:
        return value.strip()
    if isinstance(value, str) and value.strip().isdigit() and int(value) < len(CONFIG_SOURCES):
        return CONFIG_SOURCES[int(value)]
    raise RequestError(f"config_source must be one of {', '.join(CONFIG_SOURCES)} (or 0 to 3); got "
                       f"'{str(value)[:60]}'", "config_source")


def discard_pattern(text: str | None):
    """The discard_weights pattern, compiled by `regex` (re's syntax), whose searches can be
    timed out: a pattern that backtracks without end must not hold the merge (and the server)."""
    if not text:
        return None
    try:
        return regex.compile(text)
    except regex.error as error:
        raise RequestError(f"discard_weights is not a valid regular expression: {error}", "discard_weights") from error


def discards(pattern, key: str) -> bool:
    try:
        return pattern.search(key, timeout=DISCARD_MATCH_SECONDS) is not None
    except TimeoutError:
        raise RequestError(f"discard_weights takes too long to match a weight name ('{key}'): the pattern "
                           "backtracks too much; simplify it", "discard_weights") from None


def check_custom_name(name: str | None) -> None:
    name = (name or "").strip()
    if not name:
        return
    if len(name) > MAX_CUSTOM_NAME:
        raise RequestError(f"custom_name is longer than {MAX_CUSTOM_NAME} characters", "custom_name")
    if NAME_FORBIDDEN.search(name) or name.startswith(".") or ".." in name:
        raise RequestError("custom_name must be a plain file name: no folders, '..', leading dot or any of "
                           "\\ / : * ? \" < > |", "custom_name")
