"""The prompt encoder a model family names (engine/families: its `prompt_encoding`)."""

from __future__ import annotations

from engine.prompts.conditioning import PromptEncoder
from engine.prompts.flow_conditioning import FlowPromptEncoder


def prompt_encoder(family, pipe, request, embedding_options: dict) -> PromptEncoder | FlowPromptEncoder:
    """`family`'s encoder for `pipe`, set as `request` asks (emphasis, CLIP skip); the SD families'
    CLIP encoders also take the textual-inversion embeddings (`embedding_options`)."""
    if family.prompt_encoding == "flow":
        return FlowPromptEncoder(pipe, family.name, emphasis=request.emphasis or "Original")
    if family.prompt_encoding == "clip":
        return PromptEncoder(pipe, family.name, clip_skip=request.clip_skip, emphasis=request.emphasis,
                             **embedding_options)
    raise ValueError(f"{family.label} names an unknown prompt encoding {family.prompt_encoding!r}")
