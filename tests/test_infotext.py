"""Infotext is written in the ecosystem's format and reads back to the same request."""

import io

from PIL import Image

from engine.output import infotext
from engine.output.writer import png_bytes


def test_build_matches_the_documented_format():
    text = infotext.build("a cat, (masterpiece:1.2)", "blurry", {
        "Version": "0.1.0", "Seed": 123, "Steps": 20, "Sampler": "DPM++ 2M",
        "Schedule type": "Karras", "CFG scale": 7.0, "Size": "512x512",
        "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly"})
    assert text == (
        "a cat, (masterpiece:1.2)\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, "
        "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: 0.1.0")


def test_empty_negative_prompt_line_is_left_out_and_none_values_dropped():
    text = infotext.build("p", "", {"Steps": 3, "Sampler": "Euler", "Model hash": None, "Seed": 1})
    assert text == "p\nSteps: 3, Sampler: Euler, Seed: 1"


def test_values_with_commas_colons_or_newlines_are_json_quoted_and_read_back():
    params = {"Steps": 3, "Sampler": "Euler", "Seed": 5, "Lora hashes": "a: 1, b: 2",
              "Note": 'say "hi"\nbye', "Extra key": "plain"}
    text = infotext.build("x", "", params)
    assert 'Lora hashes: "a: 1, b: 2"' in text
    prompt, negative, parsed = infotext.parse(text)
    assert prompt == "x" and negative == ""
    assert parsed["Lora hashes"] == "a: 1, b: 2"
    assert parsed["Note"] == 'say "hi"\nbye'
    assert parsed["Extra key"] == "plain"


def test_multiline_prompts_and_negative_prompts_parse_back():
    text = infotext.build("line one\nline two", "neg one\nneg two",
                          {"Steps": 4, "Sampler": "Euler a", "CFG scale": 6.5, "Seed": 9})
    prompt, negative, params = infotext.parse(text)
    assert prompt == "line one\nline two"
    assert negative == "neg one\nneg two"
    assert params == {"Steps": "4", "Sampler": "Euler a", "CFG scale": "6.5", "Seed": "9"}


def test_last_line_is_parameters_only_with_three_pairs():
    prompt, _, params = infotext.parse("a photo\nStyle: cinematic, Mood: calm")
    assert params == {}
    assert prompt == "a photo\nStyle: cinematic, Mood: calm"


def test_key_order_follows_the_ecosystem_then_extras_then_version():
    text = infotext.build("p", "", {"Version": "v", "Hires steps": 5, "Size": "64x64", "Seed": 1,
                                    "Steps": 2, "Model": "m", "Variation seed": 4})
    keys = [pair.split(":")[0] for pair in text.splitlines()[-1].split(", ")]
    assert keys == ["Steps", "Seed", "Size", "Model", "Variation seed", "Hires steps", "Version"]


def test_request_fields_from_infotext():
    text = infotext.build("a dog", "ugly", {
        "Steps": 12, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 5.5,
        "Seed": 42, "Size": "640x384", "Model hash": "abcdef0123", "Model": "mine",
        "Variation seed": 7, "Variation seed strength": 0.25, "Seed resize from": "512x512"})
    fields = infotext.request_fields(text)
    assert fields == {
        "prompt": "a dog", "negative_prompt": "ugly", "steps": 12, "sampler_name": "DPM++ 2M",
        "scheduler": "Karras", "cfg_scale": 5.5, "seed": 42, "subseed": 7,
        "subseed_strength": 0.25, "width": 640, "height": 384, "seed_resize_from_w": 512,
        "seed_resize_from_h": 512, "model_hash": "abcdef0123", "model_name": "mine",
        "randn_source": "GPU"}  # A1111 writes no RNG key for its default source


def test_infotext_survives_a_png_round_trip():
    text = infotext.build("a cat", "", {"Steps": 3, "Sampler": "Euler", "Seed": 1})
    data = png_bytes(Image.new("RGB", (8, 8), "red"), text)
    assert Image.open(io.BytesIO(data)).info["parameters"] == text
