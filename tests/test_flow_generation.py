"""FLUX.1 and SD 3.5 jobs through the studio's generation run (the path every UI click and API
call takes), on tiny models: the picture equals plain diffusers' FluxPipeline /
StableDiffusion3Pipeline from the same noise, prompt and schedule; the infotext has Forge's keys
and reads back; img2img starts from the flow's mix; what a flow model cannot run is refused by
name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.addons import AddOns
from engine.errors import RequestError
from engine.files import HashCache
from engine.models.pipelines import LoadedModel
from engine.models.prediction import FLOW, ModelPrediction
from engine.models.registry import CheckpointInfo
from engine.output import infotext
from engine.request import GenerationRequest, Img2ImgOptions
from engine.sampling.schedules import schedule_sigmas
from tests.support.flow_runs import first_noise, pixels, run_job
from tests.support.flow_pipelines import tiny_flow_pipeline

PROMPT, NEGATIVE = "a red fox in the snow, (sharp:1.2)", "blurry"
PLAIN_PROMPT = "a red fox in the snow"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def addons(tmp_path_factory):
    data = tmp_path_factory.mktemp("flow-addons")
    return AddOns.in_data_dir(data, HashCache(data / "cache.json"))


def _model(layout: str, seed: int) -> LoadedModel:
    pipe = tiny_flow_pipeline(layout, seed=seed)
    family = "flux" if layout.startswith("flux") else "sd3"
    info = CheckpointInfo(f"tiny-{layout}.safetensors", f"/nowhere/tiny-{layout}.safetensors", "safetensors",
                          sha256="ab" * 32)
    return LoadedModel(info, family, pipe, dict(pipe.scheduler.config),
                       detected=ModelPrediction(FLOW, source="test"))


@pytest.fixture(scope="module")
def flux_dev():
    return _model("flux-dev", 3)


@pytest.fixture(scope="module")
def flux_schnell():
    return _model("flux-schnell", 5)


@pytest.fixture(scope="module")
def sd35():
    return _model("sd3.5-medium", 4)


_run, _first_noise, _pixels = run_job, first_noise, pixels


def test_flux_dev_txt2img_equals_flux_pipeline(flux_dev, addons):
    run, result = _run(flux_dev, addons, prompt=PLAIN_PROMPT, distilled_cfg_scale=4.0)
    pipe = flux_dev.base
    noise = _first_noise(run)
    assert noise.shape == (1, 16, 8, 8)
    reference = pipe(PLAIN_PROMPT, latents=pipe._pack_latents(noise, 1, 16, 8, 8), num_inference_steps=4,
                     guidance_scale=4.0, height=64, width=64, max_sequence_length=256).images[0]
    assert np.abs(_pixels(result.images[0]) - _pixels(reference)).max() <= 1


def test_sd35_txt2img_with_cfg_equals_sd3_pipeline(sd35, addons):
    run, result = _run(sd35, addons, prompt=PLAIN_PROMPT, negative_prompt=NEGATIVE, cfg_scale=4.5, steps=5)
    pipe = sd35.base
    # diffusers' scheduler shifts the sigmas it is given: it gets the unshifted times.
    sigmas = schedule_sigmas("Simple", 5, run.model.sigma_table(shift=1.0))
    reference = pipe(PLAIN_PROMPT, negative_prompt=NEGATIVE, latents=_first_noise(run), num_inference_steps=5,
                     sigmas=sigmas[:-1].tolist(), guidance_scale=4.5, height=64, width=64,
                     max_sequence_length=256).images[0]
    assert np.abs(_pixels(result.images[0]) - _pixels(reference)).max() <= 1


def test_flux_infotext_has_forge_keys_and_reads_back(flux_dev, addons):
    _, result = _run(flux_dev, addons, prompt=PROMPT, distilled_cfg_scale=2.5, shift=1.5, scheduler="Beta")
    text = result.infotexts[0]
    assert "Distilled CFG Scale: 2.5" in text and "Shift: 1.5" in text and "Schedule type: Beta" in text
    fields = infotext.request_fields(text)
    assert (fields["distilled_cfg_scale"], fields["shift"], fields["prompt"]) == (2.5, 1.5, PROMPT)
    again = GenerationRequest(**{name: fields[name] for name in
                                 ("prompt", "steps", "sampler_name", "scheduler", "cfg_scale", "seed", "width",
                                  "height", "distilled_cfg_scale", "shift")})
    _, second = _run(flux_dev, addons, **{k: getattr(again, k) for k in
                                          ("prompt", "steps", "sampler_name", "scheduler", "cfg_scale", "seed",
                                           "width", "height", "distilled_cfg_scale", "shift")})
    assert np.array_equal(_pixels(second.images[0]), _pixels(result.images[0]))


def test_schnell_has_no_distilled_guidance_and_defaults(flux_schnell, addons):
    _, result = _run(flux_schnell, addons, prompt=PLAIN_PROMPT)
    assert "Distilled CFG Scale" not in result.infotexts[0]
    from engine.families import family_of
    defaults = family_of("flux").defaults(flux_schnell.base)
    assert (defaults.steps, defaults.cfg_scale) == (4, 1.0)
    assert family_of("flux").defaults(tiny_flow_pipeline("flux-dev")).steps == 20


def test_distilled_guidance_and_shift_change_the_picture(flux_dev, addons):
    pictures = [_pixels(_run(flux_dev, addons, prompt=PLAIN_PROMPT, **fields)[1].images[0])
                for fields in ({}, {"distilled_cfg_scale": 8.0}, {"shift": 6.0})]
    assert not np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[0], pictures[2])


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun"])
def test_flow_samplers_run_and_batch_images_differ(sd35, addons, sampler):
    _, result = _run(sd35, addons, prompt=PROMPT, sampler_name=sampler, batch_size=2, cfg_scale=3.0)
    first, second = (_pixels(image) for image in result.images)
    assert first.shape == (64, 64, 3) and not np.array_equal(first, second)


def test_img2img_starts_from_the_flow_mix(flux_dev, addons):
    from PIL import Image
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    seen = []
    original = flux_dev.base.transformer.forward

    def record(*args, **kwargs):
        seen.append(kwargs["hidden_states"].clone())
        return original(*args, **kwargs)

    flux_dev.base.transformer.forward = record
    try:
        run, result = _run(flux_dev, addons, mode="img2img", prompt=PLAIN_PROMPT,
                           img2img=Img2ImgOptions(init_images=(init,), denoising_strength=0.5))
    finally:
        del flux_dev.base.transformer.forward
    assert len(seen) == 3   # A1111's t_enc + 1 of 4 steps at strength 0.5, from the second sigma
    from engine.networks.vae import encode
    from engine.runs.img2img import image_tensor
    with torch.no_grad():
        latents = encode(flux_dev.base.vae, image_tensor(init))
    table = flux_dev.sigma_table(shift=run.flow_shift)
    sigma = schedule_sigmas("Simple", 4, table)[1]
    expected = latents * (1 - sigma) + _first_noise(run) * sigma
    torch.testing.assert_close(seen[0], flux_dev.base._pack_latents(expected, 1, 16, 8, 8), rtol=1e-5, atol=1e-5)
    assert result.images[0].size == (64, 64)


def test_long_prompts_are_chunked_not_cut(flux_dev, addons):
    long = ", ".join(f"detail number {n}" for n in range(120))
    _, result = _run(flux_dev, addons, prompt=long)
    _, cut = _run(flux_dev, addons, prompt=long[:400])
    assert not np.array_equal(_pixels(result.images[0]), _pixels(cut.images[0]))


@pytest.mark.parametrize("fields, field, words", [
    ({"sampler_name": "DDIM"}, "sampler_name", "DDIM cannot sample"),
    ({"sampler_name": "DPM++ 2M SDE"}, "sampler_name", "Euler, Euler a"),
    ({"width": 72}, "width", "multiple of 16"),
    ({"scheduler": "Align Your Steps"}, "scheduler", "Align Your Steps"),
])
def test_what_a_flow_model_cannot_run_is_refused_by_name(flux_dev, addons, fields, field, words):
    with pytest.raises(RequestError) as caught:
        _run(flux_dev, addons, prompt=PLAIN_PROMPT, **fields)
    assert caught.value.field == field and words in caught.value.message


def test_a_missing_lora_is_named(flux_dev, addons):
    # LoRAs that exist are applied (tests/test_flow_loras.py); a missing one is named.
    _, result = _run(flux_dev, addons, prompt=PLAIN_PROMPT + " <lora:style:0.8>")
    assert "LoRA not found: style" in result.warnings


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_runs_a_second_flow_pass(flux_dev, addons, upscaler):
    _, result = _run(flux_dev, addons, prompt=PLAIN_PROMPT, extensions={"hires_fix": {
        "enabled": True, "denoising_strength": 0.6, "scale": 2.0, "upscaler": upscaler, "steps": 2}})
    assert result.images[0].size == (128, 128)
    assert "Hires upscale: 2" in result.infotexts[0] and "Distilled CFG Scale: 3.5" in result.infotexts[0]


def test_inpainting_keeps_the_unmasked_part(sd35, addons):
    from PIL import Image
    init = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    _, result = _run(sd35, addons, mode="img2img", prompt=PLAIN_PROMPT, cfg_scale=3.0,
                     img2img=Img2ImgOptions(init_images=(init,), mask=mask, denoising_strength=0.9, mask_blur=0,
                                            inpainting_fill=1))
    change = np.abs(_pixels(result.images[0]) - _pixels(init))
    assert change[20:44, 20:44].mean() > 10 * max(change[:8].mean(), 0.5)


def test_real_cfg_on_flux_dev_is_run_and_noted(flux_dev, addons):
    calls = []
    original = flux_dev.base.transformer.forward

    def record(*args, **kwargs):
        calls.append(kwargs["hidden_states"].shape[0])
        return original(*args, **kwargs)

    flux_dev.base.transformer.forward = record
    try:
        _, result = _run(flux_dev, addons, prompt=PLAIN_PROMPT, negative_prompt=NEGATIVE, cfg_scale=3.0, steps=2)
    finally:
        del flux_dev.base.transformer.forward
    assert calls == [2, 2]   # the negative half beside the positive one
    assert any("guidance-distilled" in warning and "Distilled CFG Scale (3.5)" in warning for warning in result.warnings)


def test_at_cfg_1_the_negative_prompt_is_not_encoded(flux_dev, addons):
    calls = []
    t5 = flux_dev.base.text_encoder_2
    handle = t5.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        _run(flux_dev, addons, prompt="an owl at night", negative_prompt="daylight", steps=2)
    finally:
        handle.remove()
    assert calls == [1]   # one T5 chunk, the prompt's


def test_a_hires_size_off_the_16_pixel_grid_takes_the_nearest_on_it(flux_dev, addons):
    # 80 x 1.5 = 120: on A1111's 8-pixel grid, not on FLUX's 16-pixel one.
    _, result = _run(flux_dev, addons, prompt=PLAIN_PROMPT, width=80, height=80, extensions={"hires_fix": {
        "enabled": True, "denoising_strength": 0.5, "scale": 1.5, "upscaler": "Latent", "steps": 2}})
    assert result.images[0].size == (128, 128)   # round(120 / 16) * 16
