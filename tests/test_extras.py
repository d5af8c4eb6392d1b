"""Extras: upscaling a finished picture, keeping its parameters."""

import numpy as np
import pytest
from PIL import Image

from engine.errors import RequestError
from engine.postprocess.extras import ExtrasRequest
from engine.output.writer import png_bytes

TEXT = "a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x16"


def picture() -> Image.Image:
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 32, 3), dtype=np.uint8))
    image.info["parameters"] = TEXT
    return image


def test_scale_by_keeps_the_parameters_and_saves_under_extras(engine):
    result = engine.extras(ExtrasRequest(picture(), upscaler="Lanczos", scale=2.5)).outcome()
    assert result.image.size == (80, 40)
    assert result.infotext == TEXT
    assert result.extras == "Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos"
    saved = Image.open(result.path)
    assert result.path.parent.parent.name == "extras-images" and result.path.name.endswith(".png")
    assert saved.info["parameters"] == TEXT and saved.info["extras"] == result.extras
    again = engine.extras(ExtrasRequest(picture(), upscaler="Lanczos", scale=2.5)).outcome()
    assert int(again.path.stem) == int(result.path.stem) + 1


def test_nearest_repeats_pixels_and_lanczos_blends_them(engine):
    nearest = engine.extras(ExtrasRequest(picture(), upscaler="Nearest", scale=2), save=False).outcome()
    lanczos = engine.extras(ExtrasRequest(picture(), upscaler="Lanczos", scale=2), save=False).outcome()
    big = np.asarray(nearest.image)
    assert np.array_equal(big[::2, ::2], np.asarray(picture())) and np.array_equal(big[1::2, 1::2], big[::2, ::2])
    assert not np.array_equal(np.asarray(lanczos.image), big)


@pytest.mark.parametrize("upscaler", ["Lanczos", "Nearest"])
def test_scale_to_a_size_crops_to_fit_or_stretches(engine, upscaler):
    cropped = engine.extras(ExtrasRequest(picture(), upscaler=upscaler, width=40, height=40),
                            save=False).outcome()
    stretched = engine.extras(ExtrasRequest(picture(), upscaler=upscaler, width=40, height=40, crop=False),
                              save=False).outcome()
    assert cropped.image.size == stretched.image.size == (40, 40)
    assert cropped.image.tobytes() != stretched.image.tobytes()


def test_bad_extras_requests_name_the_problem(engine):
    with pytest.raises(RequestError, match="No image"):
        engine.extras(ExtrasRequest(None))
    with pytest.raises(RequestError, match="Upscaler not found"):
        engine.extras(ExtrasRequest(picture(), upscaler="4x-UltraSharp"))
    with pytest.raises(RequestError, match="scale must be between"):
        engine.extras(ExtrasRequest(picture(), scale=20))


def test_png_bytes_can_carry_more_text():
    import io
    data = png_bytes(picture(), TEXT, {"extras": "Postprocess upscale by: 2"})
    image = Image.open(io.BytesIO(data))
    assert image.info == {"parameters": TEXT, "extras": "Postprocess upscale by: 2"}


def test_a_second_upscaler_is_blended_by_its_visibility(engine):
    def run(**kw):
        return np.asarray(engine.extras(ExtrasRequest(picture(), scale=2, **kw), save=False).outcome().image,
                          dtype=np.float64)
    lanczos, nearest = run(upscaler="Lanczos"), run(upscaler="Nearest")
    half = run(upscaler="Lanczos", upscaler_2="Nearest", upscaler_2_visibility=0.5)
    assert np.abs(half - (lanczos + nearest) / 2).max() <= 1
    assert np.array_equal(run(upscaler="Lanczos", upscaler_2="Nearest", upscaler_2_visibility=0), lanczos)
