"""Extra-network tags such as `<lora:name:0.8>`: found, removed from the text, and read.

Pure functions on strings; see the package docstring for how they fit together.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ExtraNetwork:
    """One ``<kind:name:arg1:arg2...>`` tag: ``<lora:name:0.8>`` is
    ``ExtraNetwork("lora", "name", ("0.8",))``."""

    kind: str
    name: str
    args: tuple[str, ...] = ()


# <kind:body>: kind a word; body anything up to the first ">", not starting another tag.
_EXTRA_NETWORK_TAG = re.compile(r"<(?P<kind>\w+):(?P<body>[^<>]+)>")


def extract_extra_networks(text: str) -> tuple[str, list[ExtraNetwork]]:
    """Remove ``<kind:name[:arg...]>`` tags from the text and return them in order.

    The body after ``kind:`` is split at ``:``; the first part is the name (spaces, dots,
    dashes, brackets and folder slashes allowed, kept exactly as written), the rest the args.
    The tag is replaced by nothing (``"a <lora:x:1>, b"`` -> ``"a , b"``). An unclosed tag
    (``<lora:x``), one with an empty body (``<lora:>``) or text between ``<`` and ``>`` that is
    not ``word:...`` is left in the text as it is. Never raises.
    """
    found: list[ExtraNetwork] = []

    def take(match: re.Match) -> str:
        name, *args = match.group("body").split(":")
        found.append(ExtraNetwork(match.group("kind"), name, tuple(args)))
        return ""

    return _EXTRA_NETWORK_TAG.sub(take, text), found


def _number_or_one(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        return 1.0
    return number if math.isfinite(number) else 1.0


def lora_weights(network: ExtraNetwork) -> tuple[float, float]:
    """(text-encoder weight, UNet weight) of a LoRA tag.

    ``<lora:x>`` -> (1, 1); ``<lora:x:w>`` -> (w, w); ``<lora:x:te:unet>`` -> (te, unet).
    Named args ``te=...`` and ``unet=...`` may stand in any position and win over positional
    ones; named args do not count as positions (``<lora:x:unet=0.2:0.5>`` -> (0.5, 0.2)). The
    UNet weight defaults to the text-encoder weight. A value that is not a finite number counts
    as 1.0. Never raises.
    """
    positional: list[str] = []
    named: dict[str, str] = {}
    for arg in network.args:
        key, equals, value = arg.partition("=")
        if equals and "=" not in value:
            named[key.strip()] = value
        else:
            positional.append(arg)
    te = _number_or_one(positional[0]) if positional else 1.0
    if "te" in named:
        te = _number_or_one(named["te"])
    unet = _number_or_one(positional[1]) if len(positional) > 1 else te
    if "unet" in named:
        unet = _number_or_one(named["unet"])
    return te, unet
