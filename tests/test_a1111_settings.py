"""Settings client programs set by AUTOMATIC1111's names that act here: img2img's fixed steps,
colour correction and upscaler, saving before face restoration, and disable_extra_networks."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from engine.runs import color_correction
from engine.output.infotext import parse
from engine.request import GenerationRequest
from tests.support.requests import img2img_request, with_fields

IMG2IMG = img2img_request(prompt="a red cube", steps=10, width=64, height=64,
                          sampler_name="Euler", seed=3, denoising_strength=0.5, save_images=False,
                          save_grid=False)


def a_picture(size=(64, 64)) -> Image.Image:
    rng = np.random.default_rng(4)
    base = np.zeros((*size[::-1], 3), dtype=np.uint8) + np.array([200, 60, 30], dtype=np.uint8)
    return Image.fromarray(np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8))


def unet_calls(engine, request, **overrides) -> tuple[int, object]:
    calls = []
    hook = engine.models.current.base.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with engine.settings.overridden(overrides):
            result = engine.generate(request)
    finally:
        hook.remove()
    return len(calls), result


def test_img2img_fix_steps_runs_exactly_the_steps(engine):
    request = with_fields(IMG2IMG, init_images=(a_picture(),))
    assert unet_calls(engine, request)[0] == 6  # as A1111: int(10 x 0.5) + 1
    assert unet_calls(engine, request, img2img_fix_steps=True)[0] == 10


def test_colour_correction_brings_the_colours_back(engine):
    picture = a_picture()
    request = with_fields(IMG2IMG, init_images=(picture,), denoising_strength=0.9)
    plain = engine.generate(request).images[0]
    with engine.settings.overridden({"img2img_color_correction": True}):
        corrected = engine.generate(request).images[0]

    def mean_hue_gap(image):
        ours = np.asarray(image, dtype=float).reshape(-1, 3).mean(0) / 255
        theirs = np.asarray(picture, dtype=float).reshape(-1, 3).mean(0) / 255
        return abs(colorsys.rgb_to_hsv(*ours)[0] - colorsys.rgb_to_hsv(*theirs)[0])

    assert mean_hue_gap(corrected) < mean_hue_gap(plain)


def test_histogram_matching_and_the_luminosity_blend():
    rng = np.random.default_rng(0)
    source, reference = rng.permutation(256).reshape(16, 16), rng.permutation(256).reshape(16, 16) * 2 + 7
    matched = color_correction.match_channel(source, reference)
    assert np.array_equal(np.sort(matched.ravel()), np.sort(reference.ravel()))  # same distribution
    assert np.array_equal(np.argsort(matched.ravel(), kind="stable"), np.argsort(source.ravel(), kind="stable"))
    colours, shading = rng.random((8, 8, 3)) * 0.5 + 0.25, rng.random((8, 8, 3)) * 0.5 + 0.25
    blended = color_correction.luminosity_blend(colours, shading)
    luma = np.array([0.3, 0.59, 0.11])
    assert np.allclose(blended @ luma, shading @ luma)  # the shading's luminosity...
    assert np.allclose(blended - (blended @ luma)[..., None], colours - (colours @ luma)[..., None])  # ...the colours


def test_upscaler_for_img2img_enlarges_small_pictures(engine):
    small = a_picture((24, 24))
    request = with_fields(IMG2IMG, init_images=(small,))
    lanczos = engine.generate(request).images[0]
    with engine.settings.overridden({"upscaler_for_img2img": "Nearest"}):
        nearest = engine.generate(request).images[0]
    assert lanczos.tobytes() != nearest.tobytes()
    with engine.settings.overridden({"upscaler_for_img2img": "R-Nothing 9x"}):
        result = engine.generate(request)
    assert any("Upscaler for img2img 'R-Nothing 9x' not found" in w for w in result.warnings)


def test_save_images_before_face_restoration(engine):
    request = GenerationRequest(prompt="a face", steps=3, width=64, height=64, seed=5, save_images=True,
                                save_grid=False, extensions={"restore_faces": {"enabled": True}})
    with engine.settings.overridden({"save_images_before_face_restoration": True}):
        result = engine.generate(request)
    saved = result.paths[0]
    # Numbered like any saved picture, named with the suffix, as the mature UI saves it.
    [before] = [path for path in saved.parent.glob("*-5-before-face-restoration.png") if path.stat().st_mtime
                >= saved.stat().st_mtime - 60]
    assert parse(Image.open(before).info["parameters"])[2]["Seed"] == "5"
    assert saved.is_file() and "before" not in saved.name


def test_disable_extra_networks_leaves_lora_tags_unapplied(engine, tmp_path):
    from engine.models.loading import CONFIG_ROOT
    from engine.models.tiny_models import build_demo_pipeline
    from tests.support.lora_files import write_kohya_lora

    lora = engine.addons.loras.folder / "probe-lora.safetensors"
    write_kohya_lora(build_demo_pipeline(CONFIG_ROOT / "sd1" / "tokenizer"), lora)
    engine.addons.loras.refresh()
    try:
        base = GenerationRequest(prompt="a cube", steps=3, width=64, height=64, seed=8, save_images=False,
                                 save_grid=False)
        plain = engine.generate(base)
        tagged = base.replace(prompt="a cube <lora:probe-lora:1>")
        applied = engine.generate(tagged)
        skipped = engine.generate(tagged.replace(disable_extra_networks=True))
    finally:
        lora.unlink()
        engine.addons.loras.refresh()
    assert "Lora hashes" in parse(applied.infotexts[0])[2]
    assert "Lora hashes" not in parse(skipped.infotexts[0])[2]
    assert skipped.images[0].tobytes() == plain.images[0].tobytes()


def test_exact_steps_take_any_strength_and_a_schedule_of_at_most_1000(engine):
    """Fixed steps at a low strength run (the schedule is then long), capped at the model's
    1000 timesteps; a hires pass runs its steps in full at any strength."""
    request = with_fields(IMG2IMG, init_images=(a_picture(),), steps=50, denoising_strength=0.03,
                          sampler_name="DDIM")
    assert with_fields(request, exact_steps=True).schedule_steps == 1000
    calls, result = unet_calls(engine, request, img2img_fix_steps=True)
    assert calls == 48 and result.images  # A1111's DDIM loop: two calls fewer than the steps in img2img
    hires = GenerationRequest(prompt="a cube", steps=10, width=64, height=64, seed=2, save_images=False,
                              save_grid=False, extensions={"hires_fix": {"enabled": True, "denoising_strength": 0.05}})
    calls, result = unet_calls(engine, hires)
    assert calls == 20 and result.images[0].size == (128, 128)
