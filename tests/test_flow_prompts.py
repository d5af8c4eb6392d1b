"""FLUX.1 and SD 3.x prompt encoding on tiny seeded models with the real tokenizers.

References: diffusers' own FluxPipeline / StableDiffusion3Pipeline.encode_prompt for plain
prompts (and for each piece of a chunked or BREAK prompt), T5 ids segmented independently from
the sentencepiece model file, and emphasis recomputed by hand from the raw encoders' outputs.
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from transformers import CLIPTokenizer, T5TokenizerFast

from engine.errors import CheckpointError
from engine.models.tiny_flow_models import build_tiny_flow_components
from engine.prompts.flow_conditioning import ChunkCounts, FlowPromptEncoder

CONFIGS = Path(__file__).resolve().parents[1] / "engine" / "models" / "model_configs"
CLIP_SEQ, T5_SEQ = 77, 256
CAT = "a photo of a cat"
# Words the T5 tokenizer keeps whole (one token each): long prompts of a known token count.
WORDS = ("red", "green", "blue", "house", "tree", "river", "stone", "cloud", "bird", "light")


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def _tokenizers(folder: Path, names: tuple[str, ...]) -> dict:
    classes = {"tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer, "tokenizer_3": T5TokenizerFast}
    if folder.name.startswith("flux"):
        classes["tokenizer_2"] = T5TokenizerFast
    return {name: classes[name].from_pretrained(folder / name, local_files_only=True) for name in names}


@pytest.fixture(scope="module")
def flux():
    folder = CONFIGS / "flux-dev"
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
                        **_tokenizers(folder, ("tokenizer", "tokenizer_2")),
                        **build_tiny_flow_components("flux-dev"))


@pytest.fixture(scope="module")
def sd3():
    folder = CONFIGS / "sd3.5-large"
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
        **_tokenizers(folder, ("tokenizer", "tokenizer_2", "tokenizer_3")),
        **build_tiny_flow_components("sd3.5-large"))


@pytest.fixture(scope="module")
def sd3_no_t5(sd3):
    parts = {name: getattr(sd3, name) for name in ("scheduler", "vae", "transformer", "text_encoder",
                                                   "text_encoder_2", "tokenizer", "tokenizer_2")}
    return StableDiffusion3Pipeline(text_encoder_3=None, tokenizer_3=None, **parts)


# Under no_grad as the pipelines' __call__ runs it: with autograd on, SDPA takes another kernel
# (differences of 1e-5 in T5's output).
@torch.no_grad()
def flux_reference(pipe, text):
    embeds, pooled, _ = pipe.encode_prompt(text, prompt_2=None, max_sequence_length=256)
    return embeds, pooled


@torch.no_grad()
def sd3_reference(pipe, text):
    embeds, _, pooled, _ = pipe.encode_prompt(text, prompt_2=text, prompt_3=text, max_sequence_length=256,
                                              do_classifier_free_guidance=False)
    return embeds, pooled


def words(count: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(count))


# Equality with diffusers for plain prompts.
@pytest.mark.parametrize("text", [CAT, "", "a red fox in a snowy forest, golden hour, 35mm"])
def test_flux_plain_prompt_equals_diffusers(flux, text):
    conditioning = FlowPromptEncoder(flux, "flux").encode(text)
    embeds, pooled = flux_reference(flux, text)
    assert conditioning.embeds.shape == (1, T5_SEQ, 32) and conditioning.pooled.shape == (1, 32)
    close(conditioning.embeds, embeds)
    close(conditioning.pooled, pooled)
    assert conditioning.counts == ChunkCounts(0, 1)


@pytest.mark.parametrize("text", [CAT, "", "a red fox in a snowy forest, golden hour, 35mm"])
def test_sd3_plain_prompt_equals_diffusers(sd3, text):
    conditioning = FlowPromptEncoder(sd3, "sd3").encode(text)
    embeds, pooled = sd3_reference(sd3, text)
    assert conditioning.embeds.shape == (1, CLIP_SEQ + T5_SEQ, 32) and conditioning.pooled.shape == (1, 80)
    close(conditioning.embeds, embeds)
    close(conditioning.pooled, pooled)
    assert conditioning.counts == ChunkCounts(1, 1)


def test_sd3_without_t5_equals_diffusers(sd3_no_t5):
    encoder = FlowPromptEncoder(sd3_no_t5, "sd3")
    conditioning = encoder.encode(CAT)
    embeds, pooled = sd3_reference(sd3_no_t5, CAT)
    close(conditioning.embeds, embeds)
    close(conditioning.pooled, pooled)
    assert bool((conditioning.embeds[:, CLIP_SEQ:] == 0).all())
    assert encoder.token_count(CAT) == (5, 75)  # CLIP tokens when there is no T5


# T5 token ids, derived independently from the sentencepiece model.
def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, position


def _fields(data: bytes):
    """(field number, wire type, value) of a protobuf message, enough for sentencepiece's."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = data[position:position + 8], position + 8
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
        elif wire == 5:
            value, position = data[position:position + 4], position + 4
        else:
            raise AssertionError(f"wire type {wire}")
        yield number, wire, value


def _sentencepiece_vocab(path: Path) -> list[tuple[str, float, int]]:
    """(piece, score, type) for each id, read from a sentencepiece ModelProto (field 1)."""
    pieces = []
    for number, _, value in _fields(path.read_bytes()):
        if number != 1:
            continue
        piece, score, kind = "", 0.0, 1
        for field, _, item in _fields(value):
            if field == 1:
                piece = item.decode("utf-8")
            elif field == 2:
                score = struct.unpack("<f", item)[0]
            elif field == 3:
                kind = item
        pieces.append((piece, score, kind))
    return pieces


def _unigram_ids(vocab, text: str) -> list[int]:
    """The best-scoring segmentation (Viterbi) of a unigram sentencepiece model, for plain ASCII."""
    scores = {piece: (score, index) for index, (piece, score, kind) in enumerate(vocab) if kind == 1}
    longest = max(len(piece) for piece in scores)
    normal = "\u2581" + "\u2581".join(text.split())
    best: list[tuple[float, int, int]] = [(0.0, -1, -1)] + [(-1e30, -1, -1)] * len(normal)
    for end in range(1, len(normal) + 1):
        for start in range(max(0, end - longest), end):
            found = scores.get(normal[start:end])
            if found is not None and best[start][0] + found[0] > best[end][0]:
                best[end] = (best[start][0] + found[0], start, found[1])
    ids, end = [], len(normal)
    while end > 0:
        _, start, index = best[end]
        ids.append(index)
        end = start
    return ids[::-1]


def test_t5_token_ids_match_the_sentencepiece_model(flux):
    from tokenizers import Tokenizer

    folder = CONFIGS / "flux-dev" / "tokenizer_2"
    vocab = _sentencepiece_vocab(folder / "spiece.model")
    assert len(vocab) == 32000 and vocab[0][0] == "<pad>" and vocab[1][0] == "</s>"
    fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encoder = FlowPromptEncoder(flux, "flux")
    seen = []
    handle = flux.text_encoder_2.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    try:
        for text in (CAT, "a red fox in a snowy forest", "golden hour light over the mountains"):
            expected = _unigram_ids(vocab, text)
            assert fast.encode(text).ids == expected + [1]
            assert encoder.t5_tokenize(text)[0].tokens == expected
            encoder.encode(text)
            assert seen[-1].tolist() == [expected + [1] + [0] * (T5_SEQ - len(expected) - 1)]
    finally:
        handle.remove()
    cat_ids = _unigram_ids(vocab, CAT)
    assert [vocab[i][0] for i in cat_ids] == ["\u2581", "a", "\u2581photo", "\u2581of", "\u2581", "a", "\u2581cat"]
    assert cat_ids == [3, 9, 1202, 13, 3, 9, 1712]  # as published for T5's vocabulary


# Emphasis.
def test_flux_emphasis_weights_exactly_the_weighted_tokens(flux):
    plain = FlowPromptEncoder(flux, "flux").encode(CAT)
    cat = 6  # "▁cat" is the 7th T5 token of "a photo of a cat"
    base = plain.embeds[0]
    no_norm = FlowPromptEncoder(flux, "flux", emphasis="No norm").encode("a photo of a (cat:1.3)")
    expected = base.clone()
    expected[cat] *= 1.3
    close(no_norm.embeds[0], expected)
    others = [i for i in range(T5_SEQ) if i != cat]
    assert torch.equal(no_norm.embeds[0, others], base[others])
    original = FlowPromptEncoder(flux, "flux").encode("a photo of a (cat:1.3)")
    close(original.embeds[0], expected * (base.mean() / expected.mean()))
    # No emphasis on the pooled vector: CLIP sees the text without its brackets.
    close(original.pooled, plain.pooled)
    ignored = FlowPromptEncoder(flux, "flux", emphasis="Ignore").encode("a photo of a (cat:1.3)")
    close(ignored.embeds, plain.embeds)
    literal = FlowPromptEncoder(flux, "flux", emphasis="None").encode("a photo of a (cat:1.3)")
    close(literal.embeds, flux_reference(flux, "a photo of a (cat:1.3)")[0])


def _clip_hidden(pipe, text: str) -> torch.Tensor:
    """CLIP-L's and CLIP-G's penultimate layers side by side, straight from the encoders."""
    outputs = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(text, padding="max_length", max_length=CLIP_SEQ, return_tensors="pt").input_ids
        with torch.no_grad():
            outputs.append(encoder(ids, output_hidden_states=True).hidden_states[-2][0])
    return torch.cat(outputs, dim=-1)


def test_sd3_emphasis_weights_clip_and_t5_parts(sd3):
    conditioning = FlowPromptEncoder(sd3, "sd3").encode("a photo of a (cat:1.3)")
    plain_embeds, plain_pooled = sd3_reference(sd3, CAT)
    clip = _clip_hidden(sd3, CAT)
    clip[5] *= 1.3  # start token, then "a photo of a cat": cat is position 5
    clip *= _clip_hidden(sd3, CAT).mean() / clip.mean()
    close(conditioning.embeds[0, :CLIP_SEQ], clip[:, :32], atol=1e-5)  # cropped to T5's width, as diffusers
    t5 = plain_embeds[0, CLIP_SEQ:].clone()
    t5[6] *= 1.3
    close(conditioning.embeds[0, CLIP_SEQ:], t5 * (plain_embeds[0, CLIP_SEQ:].mean() / t5.mean()))
    close(conditioning.pooled, plain_pooled)


# Chunks, BREAK and matching counts.
def test_a_300_token_prompt_makes_two_t5_chunks(flux):
    encoder = FlowPromptEncoder(flux, "flux")
    text = words(300)
    assert len(flux.tokenizer_2.tokenize(text)) == 300
    assert encoder.token_count(text) == (300, 510)
    conditioning = encoder.encode(text)
    assert conditioning.embeds.shape == (1, 2 * T5_SEQ, 32) and conditioning.counts == ChunkCounts(0, 2)
    close(conditioning.embeds[:, :T5_SEQ], flux_reference(flux, words(255))[0])
    close(conditioning.embeds[:, T5_SEQ:], flux_reference(flux, words(45, start=255))[0])
    close(conditioning.pooled, flux_reference(flux, text)[1])  # CLIP's first 75 tokens, as diffusers


def test_break_starts_new_chunks(flux, sd3):
    text = f"{CAT} BREAK a red hat"
    flux_conditioning = FlowPromptEncoder(flux, "flux").encode(text)
    assert flux_conditioning.counts == ChunkCounts(0, 2)
    close(flux_conditioning.embeds[:, :T5_SEQ], flux_reference(flux, CAT)[0])
    close(flux_conditioning.embeds[:, T5_SEQ:], flux_reference(flux, "a red hat")[0])
    sd3_conditioning = FlowPromptEncoder(sd3, "sd3").encode(text)
    assert sd3_conditioning.counts == ChunkCounts(2, 2)
    first, second = sd3_reference(sd3, CAT)[0], sd3_reference(sd3, "a red hat")[0]
    expected = torch.cat([first[:, :CLIP_SEQ], second[:, :CLIP_SEQ], first[:, CLIP_SEQ:], second[:, CLIP_SEQ:]], 1)
    close(sd3_conditioning.embeds, expected)
    close(sd3_conditioning.pooled, sd3_reference(sd3, CAT)[1])


def test_prompt_and_negative_get_the_same_chunk_counts(flux, sd3):
    cond, uncond = FlowPromptEncoder(flux, "flux").encode_pair(words(300), "")
    assert cond.embeds.shape == uncond.embeds.shape == (1, 2 * T5_SEQ, 32)
    empty = flux_reference(flux, "")[0]
    close(uncond.embeds, torch.cat([empty, empty], dim=1))  # an empty T5 chunk: end token and pads
    cond, uncond = FlowPromptEncoder(sd3, "sd3").encode_pair(words(100), "")
    assert cond.counts == uncond.counts == ChunkCounts(2, 1)
    assert cond.embeds.shape == uncond.embeds.shape == (1, 2 * CLIP_SEQ + T5_SEQ, 32)
    empty = sd3_reference(sd3, "")[0]
    close(uncond.embeds, torch.cat([empty[:, :CLIP_SEQ], empty], dim=1))  # an empty CLIP chunk: start, end, pads
    assert FlowPromptEncoder(sd3, "sd3").chunks_needed(words(100)) == 2


def test_prompt_editing_and_alternation_schedules(flux):
    encoder = FlowPromptEncoder(flux, "flux")
    cond, uncond = encoder.encode_schedules("a photo of a [dog:cat:0.5]", f"{words(300)} [ugly|blurry]", 4)
    assert [end for end, _ in cond.entries] == [2, 4]
    close(cond.at(1).embeds[:, :T5_SEQ], flux_reference(flux, "a photo of a dog")[0])
    close(cond.at(3).embeds[:, :T5_SEQ], flux_reference(flux, CAT)[0])
    close(cond.at(3).pooled, flux_reference(flux, CAT)[1])
    assert [end for end, _ in uncond.entries] == [1, 2, 3, 4]
    assert {c.embeds.shape for _, c in cond.entries + uncond.entries} == {(1, 2 * T5_SEQ, 32)}
    close(uncond.at(2).embeds[:, T5_SEQ:], flux_reference(flux, words(45, start=255) + " blurry")[0])


# Odds and ends.
def test_token_counts_and_no_textual_inversion(flux):
    encoder = FlowPromptEncoder(flux, "flux")
    assert encoder.token_count(CAT) == (7, 255)
    assert encoder.token_count(f"{CAT} BREAK red") == (256, 510)
    assert encoder.used_embeddings == {}
    assert encoder.chunks_needed(CAT) == 1
    assert encoder.encode(CAT, 3).embeds.shape == (1, 3 * T5_SEQ, 32)


def test_bad_families_and_missing_encoders_are_named(flux):
    with pytest.raises(CheckpointError, match="'sd1'"):
        FlowPromptEncoder(flux, "sd1")
    no_t5 = SimpleNamespace(text_encoder=flux.text_encoder, tokenizer=flux.tokenizer, text_encoder_2=None,
                            tokenizer_2=flux.tokenizer_2, transformer=flux.transformer)
    with pytest.raises(CheckpointError, match="FLUX.1 .* no T5 text encoder"):
        FlowPromptEncoder(no_t5, "flux")
    no_clip_g = SimpleNamespace(text_encoder=flux.text_encoder, tokenizer=flux.tokenizer, text_encoder_2=None,
                                tokenizer_2=None, text_encoder_3=None, transformer=flux.transformer)
    with pytest.raises(CheckpointError, match="no CLIP-G text encoder, no CLIP-G tokenizer"):
        FlowPromptEncoder(no_clip_g, "sd3")
