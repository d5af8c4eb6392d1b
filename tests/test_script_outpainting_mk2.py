"""The Outpainting mk2 script (extensions/outpainting_mk2) through the engine, on tiny-sd1, and
its matched-noise fill."""

import numpy as np
import pytest
from PIL import Image

from engine.errors import RequestError
from engine.output.infotext import parse
from engine.request import ScriptChoice
from extensions.outpainting_mk2 import expansion, filled, side_canvas
from extensions.outpainting_mk2 import script as mk2
from extensions.outpainting_mk2.matched_noise import matched_noise
from tests.support.requests import img2img_request, with_fields


def stripes(width=64, height=64) -> Image.Image:
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([128 + 100 * np.sin(xs / 3.0), 90 + 60 * np.cos(ys / 5.0), 40 + 0 * xs], -1)
    return Image.fromarray(pixels.astype(np.uint8))


PICTURE = stripes()
BASE = img2img_request(prompt="a wall", steps=3, width=128, height=128, sampler_name="Euler",
                       seed=21, denoising_strength=0.8, init_images=(PICTURE,), save_images=False,
                       save_grid=False)


def outpaint(engine, request=BASE, **options):
    return engine.generate(request.replace(script=ScriptChoice("Outpainting mk2", options)))


def test_sides_grow_to_multiples_of_64_sharing_the_extra():
    assert expansion(64, 64, 64, ["left", "down"]) == {"left": 64, "right": 0, "up": 0, "down": 64}
    assert expansion(100, 64, 8, ["left", "right"]) == {"left": 14, "right": 14, "up": 0, "down": 0}
    assert expansion(64, 100, 40, ["up"]) == {"left": 0, "right": 0, "up": 92, "down": 0}  # 140 -> 192
    assert expansion(64, 64, 128, ["left", "right", "up", "down"])["right"] == 128


def test_matched_noise_keeps_the_known_part_and_takes_its_colours():
    image = np.asarray(PICTURE.resize((96, 64)), dtype=np.float64) / 255
    mask = np.zeros((64, 96))
    mask[:, 64:] = 1
    a = matched_noise(image, mask, 1.0, 0.05, np.random.default_rng(3))
    b = matched_noise(image, mask, 1.0, 0.05, np.random.default_rng(3))
    c = matched_noise(image, mask, 1.0, 0.05, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a[:, 64:], c[:, 64:])
    assert np.array_equal(a[:, :64], image[:, :64])
    known, new = image[:, :64].reshape(-1, 3), a[:, 64:].reshape(-1, 3)
    assert np.allclose(np.sort(new, 0)[::16][:, :2].mean(0), np.sort(known, 0)[::24][:, :2].mean(0), atol=0.03)
    assert new.std(0)[:2].min() > 0.01  # texture, not a flat colour
    assert np.allclose(new[:, 2], known[0, 2])  # the source's flat blue stays flat


def test_the_fill_continues_the_pictures_pattern():
    """Its phases are the picture's: the fill of a striped picture is striped the same way."""
    canvas, mask, _, _ = side_canvas(stripes(128, 64), "right", 64, 0, 512, 512)
    fill = np.asarray(filled(canvas, mask, 1.0, 0.05, 1), dtype=np.float64)[:, 128:, 0]
    profile = fill.mean(0) - fill.mean()
    pattern = np.sin(np.arange(128, 192) / 3.0)
    assert abs(np.corrcoef(profile, pattern)[0, 1]) > 0.5


def test_the_picture_grows_on_the_chosen_sides_and_keeps_its_middle(engine):
    result = outpaint(engine, pixels=64, mask_blur=1, direction=["left", "down"])
    (image,) = result.images
    assert image.size == (128, 128) and result.grid is None
    old = np.asarray(image, dtype=np.int16)[0:64, 64:128]
    diff = np.abs(old - np.asarray(PICTURE, dtype=np.int16)).max(-1)
    assert diff[:48, 16:].max() <= 2     # away from the seams: the picture as it was
    assert diff[60:, :].mean() > 5 or diff[:, :4].mean() > 5  # at the seams: blended
    new = np.asarray(image, dtype=np.int16)[64:, :]
    assert new.std() > 5
    _, _, params = parse(result.infotexts[0])
    assert params["Seed"] == "21" and params["Masked content"] == "original" and params["Mask blur"] == "4"


def test_a_seed_gives_the_same_picture_and_another_seed_another(engine):
    options = {"pixels": 64, "mask_blur": 2, "direction": ["right"]}
    first = outpaint(engine, **options)
    again = outpaint(engine, **options)
    other = outpaint(engine, BASE.replace(seed=22), **options)
    assert first.images[0].size == (128, 64)
    assert first.images[0].tobytes() == again.images[0].tobytes()
    assert first.images[0].tobytes() != other.images[0].tobytes()


def test_batches_come_back_with_a_grid_and_are_saved_at_the_grown_size(engine, tmp_path):
    result = outpaint(engine, BASE.replace(batch_size=2, width=64, height=64, save_images=True),
                      pixels=64, mask_blur=2, direction=["up"])
    assert [image.size for image in result.images] == [(64, 128), (64, 128)]
    assert result.grid is not None and result.seeds == [21, 22]
    assert result.images[0].tobytes() != result.images[1].tobytes()
    saved = [Image.open(path) for path in result.paths]
    assert [image.size for image in saved] == [(64, 128), (64, 128)]
    assert parse(saved[1].info["parameters"])[2]["Seed"] == "22"


@pytest.mark.parametrize("options, words", [
    ({"direction": []}, "at least one direction"),
    ({"direction": ["sideways"]}, "unknown 'sideways'"),
    ({"pixels": 256, "direction": ["left", "right"]}, "would make a 2112x2048 picture"),
])
def test_impossible_requests_are_refused(engine, options, words):
    request = with_fields(BASE, init_images=(Image.new("RGB", (1600, 2048)),)) if "2112" in words else BASE
    with pytest.raises(RequestError, match=words):
        outpaint(engine, request, **options)


def test_script_args_skip_the_note_and_keep_the_mature_apis_order():
    options = mk2.options_from_args(["<p>Recommended settings</p>", 64, 4, ["up"], 2.0, 0.5], "img2img")
    assert options == {"pixels": 64, "mask_blur": 4, "direction": ["up"], "noise_q": 2.0, "color_variation": 0.5}
