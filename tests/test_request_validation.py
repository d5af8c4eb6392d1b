"""Bad requests are refused with a message that names the field; the engine never sees them."""

import math

import pytest
from PIL import Image

from engine.sampling import samplers
from engine.errors import NotFoundError, RequestError
from engine.request import MAX_PROMPT_CHARS, GenerationRequest, Img2ImgOptions, ScriptChoice


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


# The request's parts: img2img's options and the script, each checked with the same words as before.

PICTURE = Image.new("RGB", (64, 64))


def test_a_txt2img_request_has_no_img2img_part_and_no_script():
    from ui.api.convert import txt2img_request
    from ui.api.models import Txt2ImgBody

    request = GenerationRequest().validate()
    assert request.img2img is None and request.script is None
    assert request.img2img_steps == request.steps == request.schedule_steps
    api = txt2img_request(Txt2ImgBody(prompt="x", denoising_strength=0.5))  # the hires pass's strength
    assert api.img2img is None and api.mode == "txt2img"


def test_img2img_without_its_part_is_refused_by_name():
    with pytest.raises(RequestError) as caught:
        GenerationRequest(mode="img2img").validate()
    assert caught.value.field == "img2img"
    assert "img2img needs an init image" in caught.value.message
    assert "has no img2img options" in caught.value.message


def test_img2img_options_on_a_txt2img_request_are_refused():
    with pytest.raises(RequestError) as caught:
        GenerationRequest(img2img=Img2ImgOptions(init_images=(PICTURE,))).validate()
    assert caught.value.field == "img2img"
    assert "do not apply to a txt2img request" in caught.value.message
    with pytest.raises(RequestError, match="must be the img2img options"):
        GenerationRequest(mode="img2img", img2img={"init_images": (PICTURE,)}).validate()


@pytest.mark.parametrize("changes, field, words", [
    ({"init_images": ()}, "init_images", "img2img needs an init image: upload the picture to change"),
    ({"init_images": ("not a picture",)}, "init_images", "init_images[0] is not an image"),
    ({"mask": "white"}, "mask", "mask is not an image"),
    ({"denoising_strength": 1.5}, "denoising_strength", "denoising_strength must be between 0 and 1, got 1.5"),
    ({"denoising_strength": "high"}, "denoising_strength", "denoising_strength must be a number"),
    ({"denoising_strength": 0.0, "exact_steps": True}, "denoising_strength",
     "Denoising strength 0 changes nothing: raise it above 0"),
    ({"resize_mode": 4}, "resize_mode", "resize_mode must be between 0 and 3, got 4"),
    ({"inpainting_fill": -1}, "inpainting_fill", "inpainting_fill must be between 0 and 3, got -1"),
    ({"mask_blur": 65}, "mask_blur", "mask_blur must be between 0 and 64, got 65"),
    ({"mask_blur": 2.5}, "mask_blur", "mask_blur must be a whole number"),
    ({"inpaint_full_res_padding": 257}, "inpaint_full_res_padding", "between 0 and 256"),
    ({"initial_noise_multiplier": 2.0}, "initial_noise_multiplier", "between 0 and 1.5"),
    ({"latent_upscale_mode": "Sideways"}, "latent_upscale_mode", "Unknown latent upscale mode 'Sideways'"),
    ({"inpaint_full_res": 1}, "inpaint_full_res", "inpaint_full_res must be true or false"),
    ({"inpainting_mask_invert": "yes"}, "inpainting_mask_invert", "inpainting_mask_invert must be true or false"),
    ({"image_cfg_scale": 3.5}, "image_cfg_scale", "image_cfg_scale must be between 0 and 3, got 3.5"),
])
def test_the_img2img_parts_fields_are_named_with_the_same_words(changes, field, words):
    part = Img2ImgOptions(init_images=(PICTURE,)).replace(**changes)
    with pytest.raises(RequestError) as alone:
        part.validate()
    with pytest.raises(RequestError) as in_request:
        GenerationRequest(mode="img2img", img2img=part).validate()
    for caught in (alone, in_request):
        assert caught.value.field == field
        assert words in caught.value.message


def test_with_img2img_makes_or_changes_the_part():
    request = GenerationRequest(steps=10).with_img2img(init_images=(PICTURE,), denoising_strength=0.5)
    assert request.mode == "img2img" and request.img2img == Img2ImgOptions(init_images=(PICTURE,),
                                                                            denoising_strength=0.5)
    again = request.with_img2img(mask_blur=8)
    assert again.img2img.mask_blur == 8 and again.img2img.denoising_strength == 0.5
    assert request.validate().img2img_steps == 6 and request.img2img.sampling_steps(10) == 6
    assert not request.img2img.is_inpaint and again.with_img2img(mask=Image.new("L", (64, 64))).img2img.is_inpaint


def test_the_script_part_is_a_name_and_its_options():
    request = GenerationRequest(script=ScriptChoice("Prompt matrix", {"put_at_start": True})).validate()
    assert request.script.name == "Prompt matrix" and dict(request.script.options) == {"put_at_start": True}
    assert dict(ScriptChoice("x").options) == {}
    for bad in ("Prompt matrix", ScriptChoice("Prompt matrix", ["put_at_start"]), ScriptChoice(None)):
        with pytest.raises(RequestError) as caught:
            GenerationRequest(script=bad).validate()
        assert caught.value.field == "script_name"
        assert caught.value.message == "script must be a script's name, with its options as an object"
