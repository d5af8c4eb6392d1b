"""ControlNet preprocessors: map sizes and modes, what each filter does to a seeded synthetic
picture, names and aliases, refused values, and the weight-needing ones' availability."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.controlnet import preprocessors
from engine.errors import RequestError

WIDTH, HEIGHT = 300, 200
WEIGHT_FREE = [p.name for p in preprocessors.PREPROCESSORS.values() if not p.requires]
NEEDS_WEIGHTS = [p.name for p in preprocessors.PREPROCESSORS.values() if p.requires and not (p.ip_encoder or p.clip_encoder)]
# (IP-Adapter modules need an image encoder or insightface: tests/test_ip_adapter.py, test_ip_adapter_face_id.py)


def picture(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Image.Image:
    """A gradient with seeded random shapes and lines on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.dstack([x / width * 180 + 40, y / height * 140 + 60, np.full_like(x, 130)]).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        x1, y1 = x0 + rng.integers(20, 80), y0 + rng.integers(20, 80)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    for _ in range(4):
        points = [tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)]
        draw.line(points, fill=(0, 0, 0), width=2)
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def laplacian_energy(image: Image.Image) -> float:
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    lap = gray[1:-1, 1:-1] * 4 - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float(np.mean(lap ** 2))


def rect_mask(box=(100, 50, 180, 120), size=(WIDTH, HEIGHT)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


# --- sizes and modes -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WEIGHT_FREE)
def test_weight_free_preprocessors_give_maps_of_the_promised_size(name):
    preprocessor = preprocessors.find(name)
    result = preprocessors.run(name, picture(), resolution=128, mask=rect_mask())
    if preprocessor.uses_resolution:
        assert result.size == (192, 128)  # shorter side = resolution, aspect kept
    else:
        assert result.size == (WIDTH, HEIGHT)
    assert result.mode == ("RGBA" if preprocessor.needs_mask else "RGB")
    values = np.asarray(result)
    assert values.dtype == np.uint8 and values.shape[2] == len(result.mode)
    assert values.max() > 0  # not an empty map


def test_portrait_pictures_keep_their_aspect_and_odd_sides_round():
    assert preprocessors.run("canny", picture(200, 300), resolution=128).size == (128, 192)
    assert preprocessors.run("softedge_gradient", picture(101, 333), resolution=64).size == (64, 211)


def test_thresholds_left_out_are_the_slider_defaults():
    slider_a, slider_b = preprocessors.find("canny").threshold_a, preprocessors.find("canny").threshold_b
    assert (slider_a.default, slider_b.default) == (100, 200)
    default = preprocessors.run("canny", picture(), 128)
    explicit = preprocessors.run("canny", picture(), 128, threshold_a=100, threshold_b=200)
    assert np.array_equal(pixels(default), pixels(explicit))
    unset = preprocessors.run("canny", picture(), 128, threshold_a=-1, threshold_b=-1)  # the ecosystem's "unset"
    assert np.array_equal(pixels(default), pixels(unset))
    assert preprocessors.run("canny", picture(), -1).size == (768, 512)


def test_transparent_pixels_are_flattened_onto_white():
    drawing = Image.new("RGBA", (80, 64), (0, 0, 0, 0))
    ImageDraw.Draw(drawing).line((0, 32, 80, 32), fill=(0, 0, 0, 255), width=3)
    inverted = pixels(preprocessors.run("invert", drawing))
    assert inverted[5, 5].tolist() == [0, 0, 0] and inverted[32, 40].tolist() == [255, 255, 255]


# --- what each filter does -------------------------------------------------------------------------

def test_canny_gives_binary_white_edges_and_higher_thresholds_fewer():
    low = pixels(preprocessors.run("canny", picture(), 256, threshold_a=20, threshold_b=60))
    high = pixels(preprocessors.run("canny", picture(), 256, threshold_a=200, threshold_b=250))
    assert set(np.unique(low)) <= {0, 255}
    assert np.array_equal(low[..., 0], low[..., 1]) and np.array_equal(low[..., 0], low[..., 2])
    assert (high > 0).sum() < (low > 0).sum()
    assert (high > 0).sum() > 0


def test_invert_inverts():
    image = picture()
    assert np.array_equal(pixels(preprocessors.run("invert", image)), 255 - pixels(image))


def scribble_canvas(background, ink) -> Image.Image:
    canvas = Image.new("RGB", (256, 192), background)
    draw = ImageDraw.Draw(canvas)
    draw.line((20, 30, 230, 160), fill=ink, width=4)
    draw.ellipse((60, 40, 140, 120), outline=ink, width=3)
    return canvas


def test_scribbles_on_light_and_dark_canvases_give_the_same_white_on_black_map():
    dark_on_light = pixels(preprocessors.run("scribble", scribble_canvas("white", "black"), 192))
    light_on_dark = pixels(preprocessors.run("scribble", scribble_canvas("black", "white"), 192))
    coloured = pixels(preprocessors.run("scribble", scribble_canvas((250, 245, 230), (200, 30, 30)), 192))
    assert np.array_equal(dark_on_light, light_on_dark)
    assert np.array_equal(dark_on_light, coloured)
    assert set(np.unique(dark_on_light)) == {0, 255}
    stroke = np.asarray(scribble_canvas("black", "white").convert("L")) > 127
    assert (dark_on_light[..., 0] == 255).sum() == pytest.approx(stroke.sum(), rel=0.1)
    assert dark_on_light[0, 0, 0] == 0 and dark_on_light[30, 20, 0] == 255


def test_scribble_xdog_draws_thick_lines_and_its_threshold_thins_them():
    many = pixels(preprocessors.run("scribble_xdog", picture(), 256, threshold_a=4))
    few = pixels(preprocessors.run("scribble_xdog", picture(), 256, threshold_a=60))
    assert set(np.unique(many)) <= {0, 255}
    assert 0 < (few > 0).sum() < (many > 0).sum()


def test_soft_edges_are_grey_levels_on_the_shapes_borders():
    flat = Image.new("RGB", (128, 128), (90, 90, 90))
    assert pixels(preprocessors.run("softedge_gradient", flat, 128)).max() == 0
    square = flat.copy()
    ImageDraw.Draw(square).rectangle((32, 32, 96, 96), fill=(230, 230, 230))
    edges = pixels(preprocessors.run("softedge_gradient", square, 128))[..., 0]
    assert edges[64, 32] > 200 and edges[64, 64] == 0 and edges[5, 5] == 0
    assert len(np.unique(edges)) > 20  # soft, not binary


def test_lineart_standard_turns_dark_lines_white_on_black():
    sheet = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(sheet).line((10, 64, 118, 64), fill="black", width=2)
    lines = pixels(preprocessors.run("lineart_standard", sheet, 128))[..., 0]
    assert lines[64, 64] > 100 and lines[20, 64] == 0


def test_tile_resample_rate_4_loses_detail():
    image = picture()
    same = preprocessors.run("tile_resample", image, threshold_a=1)
    coarse = preprocessors.run("tile_resample", image, threshold_a=4)
    assert np.array_equal(pixels(same), pixels(image))
    assert coarse.size == image.size
    assert laplacian_energy(coarse) < laplacian_energy(image) / 4


def test_blur_grows_with_sigma():
    image = picture()
    slight = preprocessors.run("blur_gaussian", image, 200, threshold_a=1)
    strong = preprocessors.run("blur_gaussian", image, 200, threshold_a=16)
    original = image.resize(slight.size)
    assert laplacian_energy(strong) < laplacian_energy(slight) < laplacian_energy(original)


def test_shuffle_is_deterministic_moves_content_and_keeps_the_colours():
    image = picture()
    first = pixels(preprocessors.run("shuffle", image, 200))
    second = pixels(preprocessors.run("shuffle", image, 200))
    assert np.array_equal(first, second)
    original = pixels(image.resize((WIDTH, HEIGHT)))
    assert np.abs(first - original).mean() > 30  # the layout changed
    for channel in range(3):
        before = np.histogram(original[..., channel], bins=8, range=(0, 256))[0] / original[..., 0].size
        after = np.histogram(first[..., channel], bins=8, range=(0, 256))[0] / first[..., 0].size
        assert np.abs(before - after).sum() / 2 < 0.3  # total variation distance


@pytest.mark.parametrize("name", ["inpaint", "inpaint_only"])
def test_inpaint_marks_exactly_the_masked_pixels(name):
    image = picture()
    result = preprocessors.run(name, image, mask=rect_mask())
    values = np.asarray(result)
    expected = np.asarray(rect_mask()) == 255
    assert np.array_equal(values[..., 3] == 0, expected)
    assert set(np.unique(values[..., 3])) == {0, 255}
    assert np.array_equal(values[..., :3], np.asarray(image))


def test_inpaint_masks_of_another_size_are_scaled_to_the_picture():
    small = rect_mask((50, 25, 89, 59), (WIDTH // 2, HEIGHT // 2))
    alpha = np.asarray(preprocessors.run("inpaint_only", picture(), mask=small))[..., 3]
    assert alpha[60:110, 110:170].max() == 0 and alpha[0:40, 0:90].min() == 255


def test_inpaint_without_a_mask_uses_the_pictures_transparent_pixels():
    image = picture().convert("RGBA")
    image.putalpha(Image.eval(rect_mask(), lambda v: 255 - v))
    alpha = np.asarray(preprocessors.run("inpaint", image))[..., 3]
    assert np.array_equal(alpha == 0, np.asarray(rect_mask()) == 255)


def test_inpaint_without_any_mask_is_refused():
    with pytest.raises(RequestError) as error:
        preprocessors.run("inpaint_only", picture())
    assert error.value.field == "mask"
    opaque = picture().convert("RGBA")
    with pytest.raises(RequestError):
        preprocessors.run("inpaint", opaque)


# --- names -----------------------------------------------------------------------------------------

def test_none_comes_first_and_every_entry_is_complete():
    assert next(iter(preprocessors.PREPROCESSORS)) == "none"
    for name, preprocessor in preprocessors.PREPROCESSORS.items():
        assert preprocessor.name == name and preprocessor.title
        for slider in (preprocessor.threshold_a, preprocessor.threshold_b):
            if slider is not None:
                assert slider.minimum <= slider.default <= slider.maximum and slider.step > 0


def test_aliases_resolve_whatever_the_case():
    for alias, target in preprocessors.ALIASES.items():
        assert target in preprocessors.PREPROCESSORS
        assert preprocessors.find(alias).name == target
    assert preprocessors.find("Canny").name == "canny"
    assert preprocessors.find("SoftEdge_HED").name == "softedge_hed"
    assert preprocessors.find("invert (from white bg & black line)").name == "invert"
    assert preprocessors.find("lineart_standard (from white bg & black line)").name == "lineart_standard"
    assert preprocessors.find("pidinet_scribble").name == "scribble_pidinet"
    assert preprocessors.find("fake_scribble").name == "scribble_hed" and preprocessors.find("hed").name == "softedge_hed"
    assert preprocessors.find("").name == "none"
    for name, preprocessor in preprocessors.PREPROCESSORS.items():
        assert preprocessors.find(preprocessor.title.upper()).name == name


@pytest.mark.parametrize("name", ["scribble_hed", "softedge_pidinet", "lineart_realistic", "lineart_anime", "mlsd"])
def test_network_preprocessors_are_never_replaced_by_a_filter(tmp_path, name):
    """The ControlNet extension runs HED, PiDiNet, the line-art models and M-LSD as networks; without
    their library or weights the unit is refused with the reason, not given a filter's map."""
    with pytest.raises(RequestError) as error:
        preprocessors.run(name, picture(), 128, models_dir=tmp_path / "models")
    assert error.value.field == "module" and f"Preprocessor '{name}' is not available" in error.value.message
    assert preprocessors.find(name).requires and "annotators" in error.value.message


def test_unknown_modules_are_refused_with_the_known_names():
    with pytest.raises(RequestError) as error:
        preprocessors.find("depth_anything_v9")
    assert error.value.field == "module"
    assert "canny" in error.value.message and "depth_anything_v9" in error.value.message
    with pytest.raises(RequestError) as error:
        preprocessors.run("no such thing", picture())
    assert error.value.field == "module"


# --- refused values --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, changes, field", [
    ("canny", {"threshold_a": 0}, "threshold_a"),
    ("canny", {"threshold_a": 300}, "threshold_a"),
    ("canny", {"threshold_b": 256}, "threshold_b"),
    ("canny", {"threshold_b": float("nan")}, "threshold_b"),
    ("canny", {"threshold_a": "high"}, "threshold_a"),
    ("blur_gaussian", {"threshold_a": 100}, "threshold_a"),
    ("tile_resample", {"threshold_a": 0.5}, "threshold_a"),
    ("scribble_xdog", {"threshold_a": 65}, "threshold_a"),
    ("canny", {"resolution": 32}, "processor_res"),
    ("softedge_gradient", {"resolution": 4096}, "processor_res"),
    ("canny", {"resolution": 300.5}, "processor_res"),
    ("canny", {"resolution": float("inf")}, "processor_res"),
    ("canny", {"resolution": "512"}, "processor_res"),
    ("canny", {"resolution": -2}, "processor_res"),
    ("canny", {"threshold_a": -2}, "threshold_a"),
    ("canny", {"resolution": 2048, "image": Image.new("RGB", (1, 16))}, "processor_res"),
])
def test_out_of_range_values_are_refused_naming_the_field(name, changes, field):
    changes = {"image": picture(), **changes}
    with pytest.raises(RequestError) as error:
        preprocessors.run(name, **changes)
    assert error.value.field == field


def test_values_a_module_does_not_use_are_ignored():
    # API clients send thresholds and a resolution with every unit, used or not.
    image = picture()
    assert preprocessors.run("invert", image, resolution=4096, threshold_a=-1, threshold_b=64).size == image.size
    preprocessors.run("shuffle", image, 128, threshold_a=64, threshold_b=64)
    preprocessors.run("canny", image, 128.0)


def test_threshold_and_recolor_maps_follow_the_extensions_formulas():
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    # threshold: white where the darkest channel is above it (at the picture's size: 64 is the short side).
    binary = np.asarray(preprocessors.run("threshold", image, 64, threshold_a=100))
    assert np.array_equal(binary[:, :, 0], np.where(rgb.min(axis=2) > 100, 255, 0))
    assert set(np.unique(binary)) <= {0, 255}
    # recolor_intensity: HSV's value (the brightest channel) to the power gamma.
    intensity = np.asarray(preprocessors.run("recolor_intensity", image, threshold_a=0.5))
    expected = ((rgb.max(axis=2) / 255.0) ** 0.5 * 255.0).astype(np.uint8)
    assert np.abs(intensity[:, :, 0].astype(int) - expected).max() <= 1
    assert np.array_equal(intensity[:, :, 0], intensity[:, :, 2])
    # recolor_luminance: CIE L* of the sRGB colour, with red and blue swapped as the extension's
    # BGR conversion of an RGB picture does: pure red reads as dark as pure blue does.
    def lightness(r, g, b):
        linear = [((c / 255) / 12.92) if c / 255 <= 0.04045 else (((c / 255) + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        y = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
        return (116 * y ** (1 / 3) - 16 if y > 0.008856 else 903.3 * y) * 255 / 100

    swatches = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255], [0, 255, 0], [128, 128, 128]]], dtype=np.uint8))
    luminance = np.asarray(preprocessors.run("recolor_luminance", swatches))[0, :, 0]
    expected = [lightness(0, 0, 255), lightness(255, 0, 0), lightness(0, 255, 0), lightness(128, 128, 128)]
    assert np.abs(luminance - np.array(expected)).max() <= 2
    assert preprocessors.find("pidinet_sketch").name == "t2ia_sketch_pidi"
