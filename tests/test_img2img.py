"""img2img and inpainting through the engine, on the tiny seeded model at 64x64."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine import image_prep
from engine.errors import RequestError
from engine.runs.generation import GenerationRun
from engine.output.infotext import parse, request_fields
from engine.jobs import Job
from engine.request import ScriptChoice
from engine.sampling.noise import ImageNoise
from tests.support.requests import img2img_request, with_fields

BASE = img2img_request(prompt="a red cube", steps=4, width=64, height=64,
                       sampler_name="Euler", seed=3, denoising_strength=0.75,
                       save_images=False, save_grid=False)


def noise_image(width=64, height=64, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def square_mask(size=(64, 64), box=(24, 24, 40, 40)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def change(a: Image.Image, b: Image.Image) -> np.ndarray:
    """Per-pixel largest channel difference."""
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max(-1)


ORIGINAL = noise_image()


def test_img2img_starts_from_the_picture_and_is_reproducible(engine):
    result = engine.generate(with_fields(BASE, init_images=(ORIGINAL,)))
    again = engine.generate(with_fields(BASE, init_images=(ORIGINAL,)))
    assert result.images[0].size == (64, 64)
    assert result.images[0].tobytes() == again.images[0].tobytes()
    other = engine.generate(with_fields(BASE, init_images=(noise_image(seed=9),)))
    assert other.images[0].tobytes() != result.images[0].tobytes()
    _, _, params = parse(result.infotexts[0])
    assert params["Denoising strength"] == "0.75"


def test_low_strength_stays_closer_to_the_picture(engine):
    weak = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), denoising_strength=0.25))
    strong = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), denoising_strength=1.0))
    assert change(weak.images[0], ORIGINAL).mean() < change(strong.images[0], ORIGINAL).mean()


def test_inpaint_keeps_pixels_outside_the_mask_and_changes_inside(engine):
    result = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), mask=square_mask(), mask_blur=4))
    diff = change(result.images[0], ORIGINAL)
    # Beyond the blur's reach (about 3 radii) the original pixels are kept exactly.
    far = np.ones_like(diff, dtype=bool)
    far[24 - 12:40 + 12, 24 - 12:40 + 12] = False
    assert diff[far].max() <= 1
    assert diff[28:36, 28:36].mean() > 20


def test_inverted_mask_changes_the_outside_instead(engine):
    result = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), mask=square_mask((64, 64), (12, 12, 52, 52)),
                                         mask_blur=2, inpainting_mask_invert=True))
    diff = change(result.images[0], ORIGINAL)
    assert diff[22:42, 22:42].max() <= 1
    assert diff[:4].mean() > 20 and diff[-4:].mean() > 20


def _start_latents(engine, **fields) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The init latents an inpainting job would start from, the noise, and the latent mask."""
    request = engine.complete(with_fields(BASE, init_images=(ORIGINAL,), mask=square_mask(), **fields))
    from engine.job_results import OutputPolicy
    run = GenerationRun(Job(lambda job: None), request, engine.models.require(), OutputPolicy(),
                     engine.addons)
    noise = ImageNoise((4, 8, 8), [request.seed], source=request.randn_source).next()

    class MaskRecorder:  # what the job tells the denoiser to keep
        def set_mask(self, latents, keep):
            self.latents, self.keep = latents, keep

    recorder = MaskRecorder()
    start = run.start.latent_start(0, noise.clone(), recorder, [request.seed])
    assert torch.equal(recorder.latents, start.latents)
    assert torch.equal(recorder.keep[0, 0], 1 - torch.from_numpy(run.start.mask.latent()))
    return start.latents, noise, run.start.mask.latent()


def test_each_masked_content_mode_starts_from_its_own_latent(engine):
    original, noise, mask = _start_latents(engine, inpainting_fill=image_prep.ORIGINAL)
    inside = torch.from_numpy(mask).bool().expand_as(original)
    assert inside.any() and not inside.all()
    fill, _, _ = _start_latents(engine, inpainting_fill=image_prep.FILL)
    latent_noise, _, _ = _start_latents(engine, inpainting_fill=image_prep.LATENT_NOISE)
    nothing, _, _ = _start_latents(engine, inpainting_fill=image_prep.LATENT_NOTHING)
    # fill changes the picture under the mask before encoding: different latents inside.
    assert not torch.allclose(fill[inside], original[inside], atol=1e-3)
    # latent noise: the seed's noise under the mask, the picture's latents elsewhere.
    assert torch.equal(latent_noise[inside], noise[inside])
    assert torch.equal(latent_noise[~inside], original[~inside])
    # latent nothing: zeros under the mask.
    assert torch.count_nonzero(nothing[inside]) == 0
    assert torch.equal(nothing[~inside], original[~inside])


def test_only_masked_works_on_the_crop_and_pastes_it_back(engine):
    wide = noise_image(128, 96, seed=4)
    mask = square_mask(wide.size, (80, 40, 96, 48))
    request = with_fields(BASE, init_images=(wide,), mask=mask, mask_blur=0, inpaint_full_res=True,
                          inpaint_full_res_padding=8)
    result = engine.generate(request)
    assert result.images[0].size == wide.size
    box = image_prep.match_aspect(image_prep.crop_region(mask, 8), 64, 64, *wide.size)
    assert box == (72, 28, 104, 60)  # the padded 32x24 box, grown to the 64x64 target's shape
    diff = change(result.images[0], wide)
    outside = np.ones_like(diff, dtype=bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert diff[outside].max() == 0
    assert diff[41:47, 82:94].mean() > 20
    _, _, params = parse(result.infotexts[0])
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == "8"


def _stripes() -> Image.Image:
    """128x64: four 32-pixel vertical stripes, red, green, blue, yellow."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    image = Image.new("RGB", (128, 64))
    for i, colour in enumerate(colours):
        image.paste(colour, (32 * i, 0, 32 * (i + 1), 64))
    return image


def test_resize_modes_frame_the_picture_as_named():
    stripes = _stripes()
    just = np.asarray(image_prep.resize_image(stripes, image_prep.JUST_RESIZE, 64, 64))
    assert tuple(just[32, 8]) == (255, 0, 0) and tuple(just[32, 56]) == (255, 255, 0)
    crop = np.asarray(image_prep.resize_image(stripes, image_prep.CROP_AND_RESIZE, 64, 64))
    assert tuple(crop[32, 8]) == (0, 255, 0) and tuple(crop[32, 56]) == (0, 0, 255)
    fill = np.asarray(image_prep.resize_image(stripes, image_prep.RESIZE_AND_FILL, 64, 64))
    assert tuple(fill[32, 4]) == (255, 0, 0) and tuple(fill[32, 60]) == (255, 255, 0)
    # The picture is 64x32 in the middle; the bands above and below repeat its edge rows.
    assert tuple(fill[2, 4]) == (255, 0, 0) and tuple(fill[61, 60]) == (255, 255, 0)
    for mode in range(4):
        assert image_prep.resize_image(stripes, mode, 48, 80).size == (48, 80)


@pytest.mark.parametrize("mode", range(4))
def test_every_resize_mode_generates_at_the_requested_size(engine, mode):
    result = engine.generate(with_fields(BASE, init_images=(_stripes(),), resize_mode=mode, width=64, height=80))
    assert result.images[0].size == (64, 80)


def test_latent_upscale_encodes_at_the_pictures_own_size(engine):
    from engine.job_results import OutputPolicy
    request = engine.complete(with_fields(BASE, init_images=(_stripes(),), resize_mode=3))
    run = GenerationRun(Job(lambda job: None), request, engine.models.require(), OutputPolicy(),
                     engine.addons)
    assert run.start.inits[0].image.size == (128, 64)
    assert run.start._init_latents(0).shape[-2:] == (8, 8)


def test_outpainting_grows_the_canvas_by_exactly_the_pixels_asked(engine):
    request = with_fields(BASE, init_images=(ORIGINAL,), script=ScriptChoice("Outpainting", {
        "pixels": 16, "directions": ["left", "down"], "mask_blur": 2, "inpainting_fill": "fill"}))
    result = engine.generate(request)
    assert result.images[0].size == (64 + 16, 64 + 16)
    kept = change(result.images[0].crop((16, 0, 80, 64)), ORIGINAL)
    # The old picture survives except for the seam (twice the blur, plus the blur) by the new area.
    assert kept[:64 - 10, 10:].max() <= 1
    assert change(result.images[0].crop((0, 0, 16, 64)), ORIGINAL.crop((0, 0, 16, 64))).mean() > 10


def test_outpainting_beyond_the_largest_size_is_refused(engine):
    with pytest.raises(RequestError, match="2048"):
        engine.submit(with_fields(BASE, init_images=(ORIGINAL,), width=2048, height=64,
                                  script=ScriptChoice("outpainting", {"pixels": 64, "directions": ["right"]})))


def test_batch_cycles_through_several_init_images(engine):
    other = noise_image(seed=5)
    both = engine.generate(with_fields(BASE, init_images=(ORIGINAL, other), batch_size=2,
                                       sampler_name="Euler", seed=10, subseed_strength=0.0))
    alone = engine.generate(with_fields(BASE, init_images=(other,), seed=11))
    assert change(both.images[1], alone.images[0]).max() <= 2


def test_img2img_and_inpaint_pipelines_share_the_loaded_weights(engine):
    model = engine.models.require()
    for task in ("img2img", "inpaint"):
        pipe = model.pipeline_for(task)
        assert pipe is not model.base
        for name in ("unet", "vae", "text_encoder", "tokenizer"):
            assert getattr(pipe, name) is getattr(model.base, name), (task, name)


def test_infotext_keys_read_back(engine):
    result = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), mask=square_mask(), mask_blur=6,
                                         inpainting_fill=2, denoising_strength=0.5))
    _, _, params = parse(result.infotexts[0])
    assert params["Mask blur"] == "6" and params["Masked content"] == "latent noise"
    assert params["Inpaint area"] == "Whole picture"
    fields = request_fields(result.infotexts[0])
    assert fields["denoising_strength"] == 0.5 and fields["mask_blur"] == 6
    assert fields["inpainting_fill"] == 2 and fields["inpaint_full_res"] is False


# Bad input: a clear message naming the problem, and the engine keeps working.

def test_missing_init_image_is_refused(engine):
    with pytest.raises(RequestError, match="init image"):
        engine.submit(BASE)


def test_a_low_strength_still_runs_one_step_as_a1111(engine):
    """A1111 runs int(steps x strength) + 1 steps: 4 x 0.2 runs one, and changes the picture a little."""
    request = with_fields(BASE, init_images=(ORIGINAL,), steps=4, denoising_strength=0.2)
    assert request.img2img_steps == 1 and with_fields(BASE, steps=10, denoising_strength=0.75).img2img_steps == 8
    calls = []
    hook = engine.models.require().base.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        result = engine.generate(request)
    finally:
        hook.remove()
    assert len(calls) == 1 and change(result.images[0], ORIGINAL).mean() > 0


def test_mask_of_another_size_is_stretched_not_refused(engine):
    result = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), mask=square_mask((32, 32), (12, 12, 20, 20)),
                                         mask_blur=0))
    diff = change(result.images[0], ORIGINAL)
    assert diff[:16].max() <= 1 and diff[28:36, 28:36].mean() > 20


def test_empty_mask_is_refused_unless_the_setting_says_img2img(engine):
    empty = Image.new("L", (64, 64), 0)
    with pytest.raises(RequestError, match="mask is empty"):
        engine.submit(with_fields(BASE, init_images=(ORIGINAL,), mask=empty))
    engine.settings.update({"img2img_empty_mask_as_img2img": True})
    try:
        result = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), mask=empty))
        plain = engine.generate(with_fields(BASE, init_images=(ORIGINAL,)))
        assert result.images[0].tobytes() == plain.images[0].tobytes()
    finally:
        engine.settings.update({"img2img_empty_mask_as_img2img": False})


def test_huge_upload_is_refused_naming_the_limit(engine):
    engine.settings.update({"upload_max_megapixels": 1.0})
    try:
        with pytest.raises(RequestError, match="limited to 1 megapixels"):
            engine.submit(with_fields(BASE, init_images=(Image.new("RGB", (1200, 1000)),)))
    finally:
        engine.settings.update({"upload_max_megapixels": 16.0})
    assert engine.generate(with_fields(BASE, init_images=(ORIGINAL,))).images


def test_fill_spreads_the_surrounding_colours_into_the_hole():
    picture = Image.new("RGB", (64, 64), (200, 0, 0))
    picture.paste((0, 0, 200), (32, 0, 64, 64))
    picture.paste((0, 255, 0), (8, 24, 24, 40))  # what the mask hides must not leak out
    mask = square_mask((64, 64), (8, 24, 24, 40))
    filled = np.asarray(image_prep.fill_masked(picture, mask), dtype=np.int16)
    hole = filled[26:38, 10:22]
    assert hole[..., 1].max() < 10, "the hidden green is gone"
    assert hole[..., 0].mean() > 120 and hole[..., 2].mean() < 80, "red from around the hole"
    outside = np.asarray(picture, dtype=np.int16)
    keep = np.asarray(mask) == 0
    assert np.array_equal(filled[keep], outside[keep])


def test_unknown_unet_widths_are_refused_by_name():
    from engine.errors import CheckpointError
    from engine.models.loading import UNET_IN, detect_layout
    shapes = {UNET_IN: (320, 8, 3, 3), "cond_stage_model.transformer.text_model.embeddings."
              "token_embedding.weight": (49408, 768)}
    with pytest.raises(CheckpointError, match="8-channel UNet"):
        detect_layout(shapes, "pix2pix")


def test_sd_upscale_tiles_the_scaled_picture_and_blends_it_back(engine):
    from extensions.sd_upscale.tiles import tile_starts
    assert tile_starts(128, 64, 16) == [0, 48, 64] and tile_starts(64, 64, 16) == [0]
    seen = []
    hook = engine.models.require().base.unet.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        result = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), denoising_strength=0.5,
                                             script=ScriptChoice("sd_upscale", {"scale": 2.0, "overlap": 16})))
    finally:
        hook.remove()
    assert result.images[0].size == (128, 128)
    assert seen == [(8, 8)] * (9 * 3)  # 3 x 3 tiles of 64x64, int(4 steps x 0.5) + 1 each
    _, _, params = parse(result.infotexts[0])
    assert params["SD upscale overlap"] == "16" and params["SD upscale upscaler"] == "Lanczos"
    again = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), denoising_strength=0.5, seed=3,
                                        script=ScriptChoice("sd_upscale", {"scale": 2.0, "overlap": 16})))
    assert again.images[0].tobytes() == result.images[0].tobytes()
    with pytest.raises(RequestError, match="SD upscale: Scale factor must be between 1 and 4"):
        engine.submit(with_fields(BASE, init_images=(ORIGINAL,), script=ScriptChoice("sd_upscale", {"scale": 9.0})))


def test_dpm_fast_with_a_single_img2img_step_gets_a_clear_message(engine):
    with pytest.raises(RequestError, match="at least two img2img steps") as caught:
        engine.generate(with_fields(BASE, init_images=(ORIGINAL,), steps=4, denoising_strength=0.2,
                                    sampler_name="DPM fast"))
    assert caught.value.field == "denoising_strength"
    assert engine.generate(with_fields(BASE, init_images=(ORIGINAL,), steps=4, denoising_strength=0.5,
                                       sampler_name="DPM fast")).images
