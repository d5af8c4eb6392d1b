"""Prompt text to the conditioning the rectified-flow transformers take (FLUX.1, SD 3.x).

FLUX.1: the sequence is T5's last hidden state; the pooled vector is CLIP-L's pooled output.
SD 3.x: the sequence is CLIP-L's and CLIP-G's penultimate layers side by side (zero-padded to
T5's width), followed by T5's last hidden state; the pooled vector is both CLIPs' projections.

For a short plain prompt the result equals diffusers' `encode_prompt` with
`max_sequence_length=256`. Beyond that, the web UI's prompt habits carry over:

- Emphasis `(word:1.3)` multiplies the output vectors of the word's tokens, on CLIP as in
  PromptEncoder and on T5 as Forge does; "Original" restores each chunk's mean.
- Any length: T5 tokens are cut into chunks of 255 (plus T5's end token, padded to 256; BREAK
  starts a new chunk), each encoded on its own and concatenated, where diffusers would cut the
  prompt silently at 256 tokens. CLIP text is chunked by PromptEncoder (75 tokens, BREAK, comma
  backtrack), whose code this reuses.
- Prompt and negative prompt get the same number of chunks of each kind (empty chunks added),
  so they batch together for classifier-free guidance.

Textual inversion does not apply to these families: an embedding's name is plain text here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from engine.errors import CheckpointError
from engine.memory.offload import compute_device
from engine.prompts import prompt_parser
from engine.prompts.conditioning import (
    Conditioning,
    PromptEncoder,
    ScheduledConditioning,
    _token_ids,
    apply_emphasis,
)

FLOW_FAMILIES = ("flux", "sd3")
T5_CHUNK_TOKENS = 255  # each chunk then takes T5's end token: 256, the length FLUX and SD3 use
T5_SEQUENCE = T5_CHUNK_TOKENS + 1
_FAMILY_NAMES = {"flux": "FLUX.1", "sd3": "SD 3.x"}


class ChunkCounts(NamedTuple):
    """How many chunks of each kind a text takes: 77-token CLIP chunks in the sequence (SD 3.x;
    0 for FLUX.1, whose sequence is T5's alone) and 256-token T5 chunks."""

    clip: int
    t5: int

    def at_least(self, other: ChunkCounts) -> ChunkCounts:
        return ChunkCounts(max(self.clip, other.clip), max(self.t5, other.t5))


@dataclass(frozen=True)
class FlowConditioning(Conditioning):
    """Conditioning(embeds (1, sequence, width), pooled (1, P)) with its chunk counts."""

    counts: ChunkCounts = ChunkCounts(0, 1)

    @property
    def chunks(self) -> int:
        return max(self.counts)


@dataclass
class T5Chunk:
    """Up to 255 T5 token ids with their emphasis weights."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


class _ClipSide(PromptEncoder):
    """The CLIP encoders of a flow pipeline, with PromptEncoder's chunking and emphasis.

    SD 3.x has CLIP-L and CLIP-G side by side as SDXL has them (penultimate layers, each with
    its own pad token); FLUX.1 uses CLIP-L for its pooled output only."""

    def __init__(self, pipe, family: str, emphasis: str):
        super().__init__(pipe, "sdxl" if family == "sd3" else "sd1", emphasis=emphasis)
        self.family = family

    def _select_layer(self, encoder, output) -> torch.Tensor:
        return output.hidden_states[-2]

    def _pooled(self, outputs: list) -> torch.Tensor:
        # CLIP-L's projection (identity in SD 3.x) then CLIP-G's, from the first chunk.
        return torch.cat([output.text_embeds[:1] for output in outputs], dim=-1)

    def fragments(self, text: str) -> list[tuple[str, float]]:
        """(text, weight) pieces as the CLIP side parses them; BREAK comes as ("BREAK", -1)."""
        return self._fragments(text)

    @torch.no_grad()
    def pooled_output(self, text: str) -> torch.Tensor:
        """CLIP-L's pooled output for the text's first chunk, unweighted (FLUX.1)."""
        encoder = self.encoders[0]
        ids = self._ids(self.tokenize(text)[:1], self.pad_ids[0]).to(compute_device(encoder))
        return encoder(ids).pooler_output


class FlowPromptEncoder:
    """Encodes prompts with the text encoders of one FLUX.1 or SD 3.x pipeline, for one job."""

    def __init__(self, pipe, family: str, emphasis: str = "Original"):
        if family not in FLOW_FAMILIES:
            raise CheckpointError(f"FlowPromptEncoder encodes prompts for FLUX.1 ('flux') and SD 3.x "
                                  f"('sd3') models, not for the model family {family!r}.", "checkpoint")
        self.family = family
        _check_components(pipe, family)
        self._clip = _ClipSide(pipe, family, emphasis)
        self.emphasis = self._clip.emphasis  # an unknown mode counts as "Original", as PromptEncoder
        self.t5 = getattr(pipe, "text_encoder_2" if family == "flux" else "text_encoder_3", None)
        self.t5_tokenizer = getattr(pipe, "tokenizer_2" if family == "flux" else "tokenizer_3", None)
        # Without T5 (SD 3.x allows it) its part is zeros as wide as the transformer's context.
        self._t5_width = (self.t5.config.d_model if self.t5 is not None
                          else pipe.transformer.config.joint_attention_dim)
        self._t5_end = _token_id(getattr(self.t5_tokenizer, "eos_token_id", None), 1)
        self._t5_pad = _token_id(getattr(self.t5_tokenizer, "pad_token_id", None), 0)
        self.used_embeddings: dict[str, object] = {}  # no textual inversion for these families
        self._t5_chunks: dict[str, list[T5Chunk]] = {}
        self._cache: dict[tuple[str, ChunkCounts], FlowConditioning] = {}

    # Text to chunks.
    def t5_tokenize(self, text: str) -> list[T5Chunk]:
        """The text's T5 chunks (at least one; BREAK closes a chunk); computed once per text."""
        if text not in self._t5_chunks:
            self._t5_chunks[text] = self._t5_tokenize(text)
        return [T5Chunk(list(c.tokens), list(c.weights)) for c in self._t5_chunks[text]]

    def _t5_tokenize(self, text: str) -> list[T5Chunk]:
        chunks: list[T5Chunk] = []
        chunk = T5Chunk()
        for fragment, weight in self._clip.fragments(text):
            if (fragment, weight) == prompt_parser.BREAK:
                chunks.append(chunk)
                chunk = T5Chunk()
                continue
            if self.emphasis in ("Ignore", "None"):
                weight = 1.0
            for token in _token_ids(self.t5_tokenizer, fragment):
                if len(chunk.tokens) == T5_CHUNK_TOKENS:
                    chunks.append(chunk)
                    chunk = T5Chunk()
                chunk.tokens.append(token)
                chunk.weights.append(weight)
        if chunk.tokens or not chunks:
            chunks.append(chunk)
        return chunks

    def chunk_counts(self, text: str) -> ChunkCounts:
        """How many chunks of each kind `text` takes on its own."""
        t5 = len(self.t5_tokenize(text)) if self.t5 is not None else 1
        clip = self._clip.chunks_needed(text) if self.family == "sd3" else 0
        return ChunkCounts(clip, t5)

    def chunks_needed(self, text: str) -> int:
        return max(self.chunk_counts(text))

    def token_count(self, text: str) -> tuple[int, int]:
        """(tokens used, current limit) for the prompt box counter: T5 tokens, 255 a chunk.
        An SD 3.x model without T5 counts CLIP tokens instead."""
        if self.t5 is None or self.t5_tokenizer is None:
            return self._clip.token_count(text)
        chunks = self.t5_tokenize(text)
        used = T5_CHUNK_TOKENS * (len(chunks) - 1) + len(chunks[-1].tokens)
        return used, T5_CHUNK_TOKENS * len(chunks)

    # Chunks to conditioning.
    @torch.no_grad()
    def encode(self, text: str, chunks: int | ChunkCounts = 1) -> FlowConditioning:
        """`text` encoded, with empty chunks added up to `chunks`: a ChunkCounts for each kind,
        or a number for both (FLUX.1 has T5 chunks only)."""
        if not isinstance(chunks, ChunkCounts):
            chunks = ChunkCounts(int(chunks) if self.family == "sd3" else 0, int(chunks))
        counts = self.chunk_counts(text).at_least(chunks)
        key = (text, counts)
        if key not in self._cache:
            self._cache[key] = self._encode(text, counts)
        return self._cache[key]

    def _encode(self, text: str, counts: ChunkCounts) -> FlowConditioning:
        if self.family == "flux":
            pooled = self._clip.pooled_output(text)
            # T5 may compute on the CPU (the t5-cpu memory mode): its states go where CLIP's are.
            return FlowConditioning(self._encode_t5(text, counts.t5).to(pooled.device), pooled, counts)
        clip = self._clip.encode(text, counts.clip)
        t5 = self._encode_t5(text, counts.t5, like=clip.embeds)
        # To T5's width, as diffusers does it (F.pad; a negative pad crops, in narrower test models).
        clip_embeds = F.pad(clip.embeds, (0, t5.shape[-1] - clip.embeds.shape[-1]))
        embeds = torch.cat([clip_embeds, t5.to(clip_embeds.device, clip_embeds.dtype)], dim=1)
        return FlowConditioning(embeds, clip.pooled, counts)

    def _encode_t5(self, text: str, count: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """(1, 256 * count, width): each chunk encoded on its own (no attention mask, as diffusers)."""
        if self.t5 is None:
            return torch.zeros(1, T5_SEQUENCE * count, self._t5_width, dtype=like.dtype, device=like.device)
        chunks = self.t5_tokenize(text)
        chunks += [T5Chunk() for _ in range(count - len(chunks))]
        rows, weights = [], []
        for chunk in chunks:
            fill = T5_CHUNK_TOKENS - len(chunk.tokens)
            rows.append(chunk.tokens + [self._t5_end] + [self._t5_pad] * fill)
            weights.append(chunk.weights + [1.0] * (fill + 1))  # the end token and pads keep weight 1
        ids = torch.tensor(rows).to(compute_device(self.t5))
        hidden = self.t5(input_ids=ids).last_hidden_state
        hidden = apply_emphasis(hidden, weights, self.emphasis)
        return hidden.reshape(1, -1, hidden.shape[-1])

    # Whole jobs.
    def encode_pair(self, prompt: str, negative: str) -> tuple[FlowConditioning, FlowConditioning]:
        """Prompt and negative prompt with the same chunk counts (no prompt editing)."""
        counts = self.chunk_counts(prompt).at_least(self.chunk_counts(negative))
        return self.encode(prompt, counts), self.encode(negative, counts)

    def encode_schedules(self, prompt: str, negative: str, steps: int
                         ) -> tuple[ScheduledConditioning, ScheduledConditioning]:
        """Prompt and negative prompt over the steps (prompt editing, alternation), all with the
        same chunk counts."""
        cond_texts = prompt_parser.prompt_schedule(prompt, steps)
        uncond_texts = prompt_parser.prompt_schedule(negative, steps)
        counts = ChunkCounts(0, 1)
        for _, text in cond_texts + uncond_texts:
            counts = counts.at_least(self.chunk_counts(text))
        cond = tuple((end, self.encode(text, counts)) for end, text in cond_texts)
        uncond = tuple((end, self.encode(text, counts)) for end, text in uncond_texts)
        return ScheduledConditioning(cond), ScheduledConditioning(uncond)


def _check_components(pipe, family: str) -> None:
    """Name the missing text encoder or tokenizer instead of failing inside an encode call."""
    needed = {"text_encoder": "CLIP-L text encoder", "tokenizer": "CLIP-L tokenizer"}
    if family == "flux":
        needed.update(text_encoder_2="T5 text encoder", tokenizer_2="T5 tokenizer")
    else:
        needed.update(text_encoder_2="CLIP-G text encoder", tokenizer_2="CLIP-G tokenizer")
        if getattr(pipe, "text_encoder_3", None) is not None:
            needed["tokenizer_3"] = "T5 tokenizer"
        elif getattr(getattr(pipe, "transformer", None), "config", None) is None:
            needed["transformer"] = "transformer (its context width sizes the missing T5's zeros)"
    missing = [what for name, what in needed.items() if getattr(pipe, name, None) is None]
    if missing:
        raise CheckpointError(f"This {_FAMILY_NAMES[family]} model cannot encode prompts: it has no "
                              f"{', no '.join(missing)}. Load a checkpoint that includes them, or "
                              f"choose the separate text encoder files.", "checkpoint")


def _token_id(value, default: int) -> int:
    return default if value is None else int(value)
