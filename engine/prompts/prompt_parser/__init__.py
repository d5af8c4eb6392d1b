"""Prompt syntax: emphasis weights, prompt editing / alternation, and extra-network tags.

Pure functions on strings (no torch), following the conventions of the widely used
AUTOMATIC1111 web UI (see COMPAT.md, "Prompt syntax"). The order a prompt goes through them:

1. ``extract_extra_networks`` removes ``<lora:name:0.8>`` style tags from the whole prompt.
2. ``prompt_schedule`` resolves ``[from:to:when]`` and ``[a|b]`` into one plain text per range
   of sampling steps.
3. ``parse_emphasis`` splits each of those texts into ``(fragment, weight)`` pieces.

None of the parsers raises on any input string: text that is not valid syntax is used as it is.
"""


from engine.prompts.prompt_parser.editing import (
    Schedule,
    distinct_texts,
    prompt_schedule,
    prompt_schedules,
    text_at_step,
)
from engine.prompts.prompt_parser.emphasis import BREAK, MAX_WEIGHT, parse_emphasis, strip_emphasis
from engine.prompts.prompt_parser.extra_networks import ExtraNetwork, extract_extra_networks, lora_weights

__all__ = [
    "BREAK",
    "MAX_WEIGHT",
    "ExtraNetwork",
    "Schedule",
    "distinct_texts",
    "extract_extra_networks",
    "lora_weights",
    "parse_emphasis",
    "prompt_schedule",
    "prompt_schedules",
    "strip_emphasis",
    "text_at_step",
]
