"""Prompt text to text-encoder embeddings, any length.

Prompts are cut into 75-token chunks; each chunk is encoded as its own 77-token sequence (start
token, 75 tokens, end token and padding) and the results are concatenated, so nothing past the
77th token is silently dropped. Prompt and negative prompt are padded to the same number of
chunks. Each distinct text is encoded once per job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK_TOKENS = 75


@dataclass(frozen=True)
class Conditioning:
    embeds: torch.Tensor          # (1, 77 * chunks, dim)
    pooled: torch.Tensor | None   # SDXL's pooled text embedding (1, 1280), else None

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK_TOKENS + 2)


class PromptEncoder:
    """Encodes prompts with the text encoder(s) of one loaded pipeline."""

    def __init__(self, pipe, family: str):
        self.family = family
        self.encoders = [(pipe.tokenizer, pipe.text_encoder)]
        if family == "sdxl":
            self.encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
        self._cache: dict[str, Conditioning] = {}

    def token_count(self, text: str) -> int:
        return len(_token_ids(self.encoders[0][0], text))

    def chunked_ids(self, tokenizer, text: str, chunks: int) -> list[list[int]]:
        ids = _token_ids(tokenizer, text)
        pieces = [ids[i:i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)] or [[]]
        pieces += [[]] * (chunks - len(pieces))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return [[tokenizer.bos_token_id] + piece + [tokenizer.eos_token_id]
                + [pad] * (CHUNK_TOKENS - len(piece)) for piece in pieces]

    def chunks_needed(self, text: str) -> int:
        return max(1, -(-self.token_count(text) // CHUNK_TOKENS))

    @torch.no_grad()
    def encode(self, text: str, chunks: int) -> Conditioning:
        key = f"{chunks}\x00{text}"
        if key not in self._cache:
            self._cache[key] = self._encode(text, chunks)
        return self._cache[key]

    def _encode(self, text: str, chunks: int) -> Conditioning:
        per_encoder = []
        pooled = None
        for index, (tokenizer, encoder) in enumerate(self.encoders):
            device = next(encoder.parameters()).device
            ids = torch.tensor(self.chunked_ids(tokenizer, text, chunks), device=device)
            if self.family == "sdxl":
                # SDXL conditions on the penultimate layer of both encoders.
                output = encoder(ids, output_hidden_states=True)
                hidden = output.hidden_states[-2]
                if index == 1:
                    pooled = output.text_embeds[:1]
            else:
                hidden = encoder(ids).last_hidden_state
            per_encoder.append(hidden.reshape(1, -1, hidden.shape[-1]))
        return Conditioning(torch.cat(per_encoder, dim=-1), pooled)

    def encode_pair(self, prompt: str, negative: str) -> tuple[Conditioning, Conditioning]:
        """Prompt and negative prompt conditioning with the same number of chunks."""
        chunks = max(self.chunks_needed(prompt), self.chunks_needed(negative))
        cond = self.encode(prompt, chunks)
        uncond = self.encode(negative, chunks)
        if self.family == "sdxl" and negative == "":
            # SDXL was trained with zeroed text for the empty prompt (force_zeros_for_empty_prompt).
            uncond = Conditioning(torch.zeros_like(uncond.embeds), torch.zeros_like(uncond.pooled))
        return cond, uncond


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
