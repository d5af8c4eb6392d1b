"""Prompt conditioning on the tiny model: weights, chunks, BREAK, editing, clip skip, embeddings."""

import pytest
import torch

from engine.prompts.conditioning import CHUNK_TOKENS, PromptEncoder
from engine.request import GenerationRequest
from tests.conftest import make_engine

SEQ = CHUNK_TOKENS + 2


@pytest.fixture
def pipe(engine):
    return engine.models.current.base


def encoder(pipe, **options) -> PromptEncoder:
    return PromptEncoder(pipe, "sd1", **options)


def plain(pipe, text: str) -> torch.Tensor:
    return encoder(pipe, emphasis="Ignore").encode(text).embeds


def positions(pipe, text: str, word: str) -> list[int]:
    """Where `word`'s tokens sit in the 77-token sequence of `text` (after the start token)."""
    ids = pipe.tokenizer(text, add_special_tokens=False).input_ids
    target = pipe.tokenizer(word, add_special_tokens=False).input_ids
    for start in range(len(ids)):
        if ids[start:start + len(target)] == target:
            return [1 + start + i for i in range(len(target))]
    raise AssertionError(f"{word!r} not in {text!r}")


def test_a_weight_multiplies_its_tokens_output_without_normalisation(pipe):
    base = plain(pipe, "a red cube")
    weighted = encoder(pipe, emphasis="No norm").encode("a (red:1.5) cube").embeds
    red = positions(pipe, "a red cube", "red")
    others = [i for i in range(SEQ) if i not in red]
    assert torch.allclose(weighted[0, red], base[0, red] * 1.5, atol=1e-6)
    assert torch.equal(weighted[0, others], base[0, others])


def test_original_mode_restores_the_mean(pipe):
    base = plain(pipe, "a red cube")
    weighted = encoder(pipe, emphasis="Original").encode("a (red:1.5) cube").embeds
    assert torch.allclose(weighted.mean(), base.mean(), atol=1e-6)
    scaled = base.clone()
    scaled[0, positions(pipe, "a red cube", "red")] *= 1.5
    expected = scaled * (base.mean() / scaled.mean())
    assert torch.allclose(weighted, expected, atol=1e-6)


def test_brackets_nest_and_ignore_mode_drops_weights(pipe):
    base = plain(pipe, "a red cube")
    nested = encoder(pipe, emphasis="No norm").encode("a ((red)) cube").embeds
    red = positions(pipe, "a red cube", "red")
    assert torch.allclose(nested[0, red], base[0, red] * 1.21, atol=1e-5)
    ignored = encoder(pipe, emphasis="Ignore").encode("a ((red)) cube").embeds
    assert torch.equal(ignored, base)


def test_tokens_past_77_make_a_second_chunk(pipe):
    words = " ".join(["x"] * 80)  # more than 75 tokens
    enc = encoder(pipe)
    tokens = len(pipe.tokenizer(words, add_special_tokens=False).input_ids)
    assert tokens > CHUNK_TOKENS
    conditioning = enc.encode(words)
    assert conditioning.embeds.shape[1] == 2 * SEQ
    assert enc.token_count(words) == (tokens, 2 * CHUNK_TOKENS)


def test_break_starts_a_new_chunk(pipe):
    enc = encoder(pipe)
    chunks = enc.tokenize("a red cube BREAK a blue ball")
    assert len(chunks) == 2
    assert chunks[0].tokens == pipe.tokenizer("a red cube", add_special_tokens=False).input_ids
    assert enc.encode("a red cube BREAK a blue ball").embeds.shape[1] == 2 * SEQ
    first_half = enc.encode("a red cube BREAK a blue ball").embeds[:, :SEQ]
    assert torch.equal(first_half, enc.encode("a red cube").embeds)


def test_a_full_chunk_moves_the_words_after_a_near_comma(pipe):
    enc = encoder(pipe)
    head = " ".join(["x"] * 70)
    chunks = enc.tokenize(head + ", tail words here and more of them")
    comma = pipe.tokenizer.convert_tokens_to_ids(",</w>")
    assert chunks[0].tokens[-1] == comma, "the first chunk ends at the comma"
    assert len(chunks[0].tokens) == 71
    assert chunks[1].tokens[0] == pipe.tokenizer("tail", add_special_tokens=False).input_ids[0]


def test_prompt_and_negative_are_padded_to_the_same_length(pipe):
    cond, uncond = encoder(pipe).encode_schedules(" ".join(["x"] * 100), "blurry", steps=4)
    assert cond.at(1).embeds.shape == uncond.at(1).embeds.shape == (1, 2 * SEQ, 32)


def test_clip_skip_uses_an_earlier_layer(pipe):
    ids = encoder(pipe)._ids(encoder(pipe).tokenize("a red cube"), pipe.tokenizer.pad_token_id)
    output = pipe.text_encoder(ids, output_hidden_states=True)
    expected = pipe.text_encoder.final_layer_norm(output.hidden_states[-2])
    skipped = encoder(pipe, clip_skip=2).encode("a red cube").embeds
    assert torch.allclose(skipped, expected, atol=1e-6)
    assert not torch.allclose(skipped, plain(pipe, "a red cube"))


def _prompt_contexts(engine, prompt: str, steps: int = 4) -> list[torch.Tensor]:
    """The prompt conditioning the UNet sees at each call while generating `prompt`."""
    pipe = engine.models.current.base
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"][1:].detach().clone())  # [negative, prompt]

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        engine.generate(GenerationRequest(prompt=prompt, steps=steps, width=64, height=64,
                                          sampler_name="Euler", seed=1, save_images=False))
    finally:
        handle.remove()
    return seen


def test_prompt_editing_switches_conditioning_at_the_named_step(engine):
    enc = encoder(engine.models.current.base, emphasis=engine.settings["emphasis"])
    red, blue = enc.encode("a red cube").embeds, enc.encode("a blue cube").embeds
    seen = _prompt_contexts(engine, "a [red:blue:2] cube")
    assert len(seen) == 4
    assert [torch.equal(c, red) for c in seen] == [True, True, False, False]
    assert [torch.equal(c, blue) for c in seen] == [False, False, True, True]


def test_alternation_changes_every_step(engine):
    enc = encoder(engine.models.current.base)
    red, blue = enc.encode("red cube").embeds, enc.encode("blue cube").embeds
    seen = _prompt_contexts(engine, "[red|blue] cube")
    assert all(torch.equal(context, want) for context, want in zip(seen, [red, blue, red, blue]))


def test_token_counter_ignores_lora_tags_and_counts_the_longest_step(engine):
    tokenizer = engine.models.current.base.tokenizer

    def tokens(text):
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    assert engine.token_count("a red cube") == (tokens("a red cube"), 75)
    assert engine.token_count("a red cube <lora:anything:0.5>") == (tokens("a red cube"), 75)
    longest = tokens("a red red red cube")
    assert engine.token_count("a [red:red red red:2] cube", steps=4) == (longest, 75)
    assert engine.token_count(" ".join(["x"] * 80)) == (80, 150)


def test_sdxl_end_to_end_with_a_long_weighted_prompt(tiny_models, tmp_path):
    engine = make_engine(tiny_models, tmp_path, checkpoint="tiny-sdxl")
    try:
        prompt = "(a red cube:1.3), " + ", ".join(f"[detail {i}]" for i in range(40)) + " BREAK sky"
        result = engine.generate(GenerationRequest(prompt=prompt, negative_prompt="blurry", steps=3,
                                                   width=64, height=64, seed=3, save_images=False))
        assert result.images[0].size == (64, 64)
        model = engine.models.current
        enc = PromptEncoder(model.base, "sdxl")
        cond = enc.encode(prompt)
        assert cond.embeds.shape[0] == 1 and cond.embeds.shape[1] % SEQ == 0
        assert cond.chunks >= 3  # over 75 tokens, then BREAK
        assert cond.embeds.shape[2] == 32 + 64  # both encoders side by side
        assert cond.pooled.shape == (1, model.base.text_encoder_2.config.projection_dim)
        plain_result = engine.generate(GenerationRequest(prompt="a red cube", steps=3, width=64,
                                                         height=64, seed=3, save_images=False))
        assert plain_result.images[0].tobytes() != result.images[0].tobytes()
    finally:
        engine.shutdown()
