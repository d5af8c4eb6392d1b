"""Prompt text to text-encoder embeddings, the way users of the mature web UIs expect.

- Emphasis: `(x)`, `[x]`, `(x:1.5)` weights multiply the encoder output of their tokens; the
  "Original" mode then restores each chunk's mean so weights change direction, not loudness.
- Any length: the tokens are cut into 75-token chunks (moved back to the last comma when one is
  near, or forced by BREAK); each chunk is encoded as its own 77-token sequence and the results
  are concatenated.
- Textual-inversion embeddings: their names in the text are replaced by their vectors.
- Clip skip: the output of an earlier encoder layer (SD 1.x/2.x), computed here because
  diffusers' own clip_skip does not work with transformers 5.
- SDXL: both encoders' penultimate layers side by side, and the second encoder's pooled output.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from engine.prompts import prompt_parser
from engine.memory.offload import compute_device

CHUNK_TOKENS = 75
# Far beyond any useful prompt (the tokenizer would make hundreds of 75-token chunks); a guard
# against pasting a file into the box, not a creative limit. The request and saved styles keep it.
MAX_PROMPT_CHARS = 20_000
COMMA_BACKTRACK = 20  # a chunk that fills up moves text after a comma this close to its end
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
EMBEDDING_PLACEHOLDER = 0


@dataclass(frozen=True)
class Conditioning:
    embeds: torch.Tensor          # (1, 77 * chunks, dim)
    pooled: torch.Tensor | None   # SDXL's pooled text embedding (1, 1280), FLUX/SD 3's, else None

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK_TOKENS + 2)


@dataclass
class Chunk:
    """Up to 75 token ids with their weights, and where embedding vectors go (offset, name)."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    embeddings: list[tuple[int, object]] = field(default_factory=list)


@dataclass(frozen=True)
class ScheduledConditioning:
    """Which conditioning each sampling step uses: (last step, conditioning) in order."""

    entries: tuple[tuple[int, Conditioning], ...]

    def at(self, step: int) -> Conditioning:
        for end, conditioning in self.entries:
            if step <= end:
                return conditioning
        return self.entries[-1][1]

    @property
    def is_constant(self) -> bool:
        return len(self.entries) == 1


class EmbeddingIndex:
    """Finds textual-inversion embedding names in a token stream (by their token ids)."""

    def __init__(self, tokenizer, embeddings: dict[str, object], vector_count):
        self._by_first: dict[int, list[tuple[tuple[int, ...], object]]] = {}
        self._vector_count = vector_count
        for name, embedding in embeddings.items():
            ids = tuple(_token_ids(tokenizer, name))
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda item: -len(item[0]))

    def match(self, tokens: list[int], position: int) -> tuple[object, int] | None:
        """(embedding, how many tokens its name takes) if one starts at `position`."""
        for ids, embedding in self._by_first.get(tokens[position], ()):
            if tuple(tokens[position:position + len(ids)]) == ids:
                return embedding, len(ids)
        return None

    def vector_count(self, embedding) -> int:
        return self._vector_count(embedding)


class PromptEncoder:
    """Encodes prompts with the text encoder(s) of one loaded pipeline, for one job."""

    def __init__(self, pipe, family: str, clip_skip: int = 1, emphasis: str = "Original",
                 embeddings: EmbeddingIndex | None = None, vectors_for=None):
        self.family = family
        self.clip_skip = max(1, int(clip_skip))
        self.emphasis = emphasis if emphasis in EMPHASIS_MODES else "Original"
        if getattr(pipe, "text_encoder", None) is None:
            # The SDXL refiner: the second (OpenCLIP bigG) encoder alone.
            self.encoders, tokenizers = [pipe.text_encoder_2], [pipe.tokenizer_2]
        else:
            self.encoders, tokenizers = [pipe.text_encoder], [pipe.tokenizer]
            if family == "sdxl":
                self.encoders.append(pipe.text_encoder_2)
                tokenizers.append(pipe.tokenizer_2)
        self.tokenizer = tokenizers[0]
        # Chunks are cut with the first tokenizer (all share one BPE); padding differs: SDXL's
        # second tokenizer (and SD 2.x's) pads with "!" (id 0) where CLIP-L repeats the end token.
        self.pad_ids = [t.pad_token_id if t.pad_token_id is not None else t.eos_token_id
                        for t in tokenizers]
        self.embeddings = embeddings
        # vectors_for(embedding, encoder index) -> (n, width) tensor for that encoder.
        self.vectors_for = vectors_for
        self.used_embeddings: dict[str, object] = {}
        self._comma = self.tokenizer.convert_tokens_to_ids(",</w>")
        self._cache: dict[tuple[str, int], Conditioning] = {}
        self._chunks: dict[str, list[Chunk]] = {}

    # Text to chunks.
    def _fragments(self, text: str) -> list[tuple[str, float]]:
        if self.emphasis == "None":
            return [(text, 1.0)]
        return prompt_parser.parse_emphasis(text)

    def tokenize(self, text: str) -> list[Chunk]:
        """The text's chunks; computed once per text (a job asks for its length, then encodes)."""
        if text not in self._chunks:
            self._chunks[text] = self._tokenize(text)
        return [Chunk(list(c.tokens), list(c.weights), list(c.embeddings)) for c in self._chunks[text]]

    def _tokenize(self, text: str) -> list[Chunk]:
        chunks: list[Chunk] = []
        chunk = Chunk()
        last_comma = -1

        def close(current: Chunk) -> Chunk:
            nonlocal last_comma
            chunks.append(current)
            last_comma = -1
            return Chunk()

        for fragment, weight in self._fragments(text):
            if weight == -1 and fragment == "BREAK":
                chunk = close(chunk)
                continue
            if self.emphasis in ("Ignore", "None"):
                weight = 1.0
            tokens = _token_ids(self.tokenizer, fragment)
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self._comma:
                    last_comma = len(chunk.tokens)
                elif (len(chunk.tokens) == CHUNK_TOKENS and last_comma != -1
                      and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK):
                    # Move the words after the last comma to the next chunk, whole.
                    cut = last_comma + 1
                    moved = Chunk(chunk.tokens[cut:], chunk.weights[cut:],
                                  [(o - cut, e) for o, e in chunk.embeddings if o >= cut])
                    chunk = Chunk(chunk.tokens[:cut], chunk.weights[:cut],
                                  [(o, e) for o, e in chunk.embeddings if o < cut])
                    close(chunk)
                    chunk = moved
                if len(chunk.tokens) == CHUNK_TOKENS:
                    chunk = close(chunk)
                found = self.embeddings.match(tokens, position) if self.embeddings else None
                if found is None:
                    chunk.tokens.append(token)
                    chunk.weights.append(weight)
                    position += 1
                    continue
                embedding, name_length = found
                count = min(self.embeddings.vector_count(embedding), CHUNK_TOKENS)
                if len(chunk.tokens) + count > CHUNK_TOKENS:
                    chunk = close(chunk)
                chunk.embeddings.append((len(chunk.tokens), embedding))
                # Placeholder ids, replaced by the vectors. Not the end token: the pooled output
                # is read at the (first or highest) end token, which must stay the real one.
                chunk.tokens.extend([EMBEDDING_PLACEHOLDER] * count)
                chunk.weights.extend([weight] * count)
                self.used_embeddings[getattr(embedding, "name", str(embedding))] = embedding
                position += name_length
        if chunk.tokens or not chunks:
            chunks.append(chunk)
        return chunks

    def token_count(self, text: str) -> tuple[int, int]:
        """(tokens used, current limit) as the prompt box counter shows it: 80/150."""
        chunks = self.tokenize(text)
        used = CHUNK_TOKENS * (len(chunks) - 1) + len(chunks[-1].tokens)
        return used, CHUNK_TOKENS * len(chunks)

    # Chunks to embeddings.
    @torch.no_grad()
    def encode(self, text: str, chunks: int = 1) -> Conditioning:
        """`text` encoded, padded with empty chunks to at least `chunks`."""
        key = (text, chunks)
        if key not in self._cache:
            pieces = self.tokenize(text)
            pieces += [Chunk() for _ in range(chunks - len(pieces))]
            self._cache[key] = self._encode_chunks(pieces)
        return self._cache[key]

    def chunks_needed(self, text: str) -> int:
        return len(self.tokenize(text))

    def _ids(self, chunks: list[Chunk], pad_id: int) -> torch.Tensor:
        tokenizer = self.tokenizer
        rows = []
        for chunk in chunks:
            fill = CHUNK_TOKENS - len(chunk.tokens)
            rows.append([tokenizer.bos_token_id] + chunk.tokens + [tokenizer.eos_token_id]
                        + [pad_id] * fill)
        return torch.tensor(rows)

    def _encode_chunks(self, chunks: list[Chunk]) -> Conditioning:
        outputs, raw = [], []
        for index, encoder in enumerate(self.encoders):
            # Where it computes: in an offload mode its weights wait in RAM.
            ids = self._ids(chunks, self.pad_ids[index]).to(compute_device(encoder))
            with self._inject_embeddings(encoder, index, chunks):
                output = encoder(ids, output_hidden_states=True)
            outputs.append(self._select_layer(encoder, output))
            raw.append(output)
        hidden = torch.cat(outputs, dim=-1)  # (chunks, 77, dim)
        hidden = self._apply_weights(hidden, chunks)
        return Conditioning(hidden.reshape(1, -1, hidden.shape[-1]), self._pooled(raw))

    def _pooled(self, outputs: list) -> torch.Tensor | None:
        """The pooled text embedding from the encoders' outputs (first chunk), if the family has one."""
        pooled = None
        for output in outputs:
            if self.family == "sdxl" and getattr(output, "text_embeds", None) is not None:
                pooled = output.text_embeds[:1]  # OpenCLIP bigG's projection (base and refiner)
        return pooled

    def _select_layer(self, encoder, output) -> torch.Tensor:
        if self.family == "sdxl":
            return output.hidden_states[-2]  # as SDXL was trained; clip skip does not apply
        if self.clip_skip == 1:
            return output.last_hidden_state
        layers = output.hidden_states
        index = max(-len(layers) + 1, -self.clip_skip)
        text_model = getattr(encoder, "text_model", encoder)
        return text_model.final_layer_norm(layers[index])

    def _apply_weights(self, hidden: torch.Tensor, chunks: list[Chunk]) -> torch.Tensor:
        if self.emphasis in ("Ignore", "None"):
            return hidden
        rows = [[1.0] + chunk.weights + [1.0] * (CHUNK_TOKENS - len(chunk.weights) + 1)
                for chunk in chunks]
        return apply_emphasis(hidden, rows, self.emphasis)

    @contextmanager
    def _inject_embeddings(self, encoder, index: int, chunks: list[Chunk]):
        """Put embedding vectors where their placeholder tokens sit, for this call only."""
        placements = [(row, offset, embedding) for row, chunk in enumerate(chunks)
                      for offset, embedding in chunk.embeddings]
        if not placements or self.vectors_for is None:
            yield
            return

        def replace(module, inputs, output):
            output = output.clone()
            for row, offset, embedding in placements:
                vectors = self.vectors_for(embedding, index).to(output.device, output.dtype)
                count = min(vectors.shape[0], CHUNK_TOKENS - offset)
                output[row, 1 + offset:1 + offset + count] = vectors[:count]
            return output

        handle = encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    # Whole jobs.
    def encode_schedules(self, prompt: str, negative: str, steps: int
                         ) -> tuple[ScheduledConditioning, ScheduledConditioning]:
        """Prompt and negative prompt over the steps (prompt editing), all with one chunk count."""
        cond_texts = prompt_parser.prompt_schedule(prompt, steps)
        uncond_texts = prompt_parser.prompt_schedule(negative, steps)
        chunks = max(self.chunks_needed(text) for _, text in cond_texts + uncond_texts)
        cond = tuple((end, self.encode(text, chunks)) for end, text in cond_texts)
        uncond = tuple((end, self._negative(text, chunks)) for end, text in uncond_texts)
        return ScheduledConditioning(cond), ScheduledConditioning(uncond)

    def _negative(self, text: str, chunks: int) -> Conditioning:
        conditioning = self.encode(text, chunks)
        if self.family == "sdxl" and text == "":
            # SDXL was trained with zeroed text for the empty prompt (force_zeros_for_empty_prompt).
            return Conditioning(torch.zeros_like(conditioning.embeds),
                                torch.zeros_like(conditioning.pooled))
        return conditioning

    def encode_pair(self, prompt: str, negative: str) -> tuple[Conditioning, Conditioning]:
        """Prompt and negative prompt conditioning with the same number of chunks (no editing)."""
        chunks = max(self.chunks_needed(prompt), self.chunks_needed(negative))
        return self.encode(prompt, chunks), self._negative(negative, chunks)


def apply_emphasis(hidden: torch.Tensor, rows: list[list[float]], emphasis: str) -> torch.Tensor:
    """Encoder output (chunks, tokens, width) with each token's vector multiplied by its weight
    (`rows`: one weight per token, per chunk). "Original" then restores each chunk's mean, so
    weights change direction, not loudness; "No norm" keeps the plain product; "Ignore" and
    "None" leave the output alone."""
    if emphasis in ("Ignore", "None"):
        return hidden
    weights = torch.tensor(rows, dtype=hidden.dtype, device=hidden.device)
    if bool((weights == 1.0).all()):
        return hidden
    original_mean = hidden.float().mean(dim=(1, 2), keepdim=True)
    weighted = hidden * weights.unsqueeze(-1)
    if emphasis == "Original":
        new_mean = weighted.float().mean(dim=(1, 2), keepdim=True)
        # An all-zero chunk (every weight 0) has no mean to restore.
        scale = torch.where(new_mean == 0, torch.ones_like(new_mean), original_mean / new_mean)
        weighted = (weighted.float() * scale).to(hidden.dtype)
    return weighted


def _token_ids(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    # tokenize() gives the same ids as calling the tokenizer, without its warning about texts
    # longer than 77 tokens: long texts are the point here.
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
