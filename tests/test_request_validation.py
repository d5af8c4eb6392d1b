"""Bad requests are refused with a message that names the field; the engine never sees them."""

import math

import pytest

from engine.sampling import samplers
from engine.errors import NotFoundError, RequestError
from engine.request import MAX_PROMPT_CHARS, GenerationRequest


@pytest.mark.parametrize("changes, field, words", [
    ({"width": 65}, "width", "multiple of 8"),
    ({"height": 100}, "height", "multiple of 8"),
    ({"width": 32}, "width", "between 64 and 2048"),
    ({"height": 4096}, "height", "between 64 and 2048"),
    ({"width": -512}, "width", "between 64 and 2048"),
    ({"steps": 0}, "steps", "between 1 and 150"),
    ({"steps": 151}, "steps", "between 1 and 150"),
    ({"batch_size": 9}, "batch_size", "between 1 and 8"),
    ({"batch_size": 0}, "batch_size", "between 1 and 8"),
    ({"n_iter": 0}, "n_iter", "between 1 and 100"),
    ({"seed": 1.5}, "seed", "whole number"),
    ({"seed": "12"}, "seed", "whole number"),
    ({"seed": 2**32}, "seed", "between -1 and 4294967295"),
    ({"seed": -2}, "seed", "between -1"),
    ({"cfg_scale": math.nan}, "cfg_scale", "must be a number"),
    ({"cfg_scale": 31}, "cfg_scale", "between 1 and 30"),
    ({"subseed_strength": 1.5}, "subseed_strength", "between 0 and 1"),
    ({"seed_resize_from_w": 100}, "seed_resize_from_w", "multiple of 8"),
    ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt", "too long"),
    ({"negative_prompt": None}, "negative_prompt", "must be text"),
    ({"scheduler": "Sideways"}, "scheduler", "Unknown schedule type"),
    ({"steps": True}, "steps", "whole number"),
])
def test_bad_fields_are_named(changes, field, words):
    with pytest.raises(RequestError) as caught:
        GenerationRequest(**changes).validate()
    assert caught.value.field == field
    assert words in caught.value.message


def test_unknown_sampler_is_not_found_with_the_ecosystems_words():
    with pytest.raises(NotFoundError) as caught:
        GenerationRequest(sampler_name="Warp drive").validate()
    assert caught.value.status == 400
    assert caught.value.message.startswith("Sampler not found")
    assert "Euler a" in caught.value.message


def test_every_sampler_takes_every_schedule_type_as_in_a1111():
    # A1111 offers each schedule type with each sampler; the timestep samplers ignore it, so
    # their infotext names no schedule type.
    for sampler_name in ("DDIM", "DPM adaptive", "LCM", "UniPC", "Restart"):
        request = GenerationRequest(sampler_name=sampler_name, scheduler="Karras").validate()
        sampler, schedule = samplers.resolve(request.sampler_name, request.scheduler)
        assert schedule == "Karras"
        assert samplers.effective_schedule(sampler, schedule) == (None if sampler.kind == "timesteps" else "Karras")


def test_defaults_are_valid_and_match_the_ui_defaults():
    request = GenerationRequest().validate()
    assert (request.steps, request.width, request.height, request.cfg_scale) == (20, 512, 512, 7.0)
    assert request.seed == -1 and request.batch_size == 1


@pytest.mark.parametrize("name, sampler, schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
    ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
    ("LMS Karras", "LMS", "Karras"),
    ("k_euler_a", "Euler a", "Automatic"),
    ("euler", "Euler", "Automatic"),
])
def test_old_combined_names_and_aliases(name, sampler, schedule):
    found, chosen = samplers.resolve(name)
    assert (found.name, chosen) == (sampler, schedule)


def test_explicit_schedule_wins_over_the_combined_name():
    assert samplers.resolve("DPM++ 2M Karras", "Exponential")[1] == "Exponential"


def test_api_schedule_labels_are_accepted():
    assert samplers.resolve("Euler", "sgm_uniform")[1] == "SGM Uniform"
    assert samplers.resolve("Euler", "karras")[1] == "Karras"
