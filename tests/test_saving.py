"""The "Saving images" settings: format, file and folder names, output folders kept inside
outputs/, infotext beside or inside every file."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from engine.errors import RequestError
from engine.postprocess.extras import ExtrasRequest
from engine.output.filenames import NAME_CHARS, ImageFields, expand, safe_name
from engine.output.writer import OutputWriter, read_infotext
from engine.request import GenerationRequest, ScriptChoice
from engine.settings.store import Settings
from tests.support.requests import img2img_request

TEXT = "a cat, ünïcode ☃\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 64x48"
TODAY = dt.date.today().isoformat()
FOLDER_KEYS = ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples",
               "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids")


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "outputs").mkdir()
    return tmp_path


@pytest.fixture
def settings(data_dir):
    return Settings(data_dir / "config.json")


@pytest.fixture
def writer(data_dir, settings):
    return OutputWriter(data_dir / "outputs", settings)


def noise(size=(64, 48), mode="RGB", seed=0) -> Image.Image:
    channels = len(mode)
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array, mode)


FIELDS = ImageFields(seed=42, prompt="a cat, on a mat", negative_prompt="blurry", styles=("Warm",),
                     model_name="tiny-sd1", model_hash="0123456789", sampler="DPM++ 2M", steps=20,
                     cfg=7, width=64, height=48, job_timestamp="20240102030405")


# Formats.
@pytest.mark.parametrize("file_format", ["jpg", "webp"])
def test_jpeg_and_webp_carry_the_infotext_in_exif(writer, settings, file_format):
    settings.update({"samples_format": file_format})
    path = writer.save_image(noise(), "txt2img", 42, TEXT)
    assert path.name == f"00000-42.{file_format}"
    saved = Image.open(path)
    assert saved.format == {"jpg": "JPEG", "webp": "WEBP"}[file_format]
    assert read_infotext(saved) == TEXT
    # As the ecosystem writes it: character code UNICODE, then UTF-16 big-endian.
    comment = saved.getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\x00" + TEXT.encode("utf-16-be")


def test_jpeg_drops_alpha_and_webp_keeps_it(writer, settings):
    settings.update({"samples_format": "jpg"})
    assert Image.open(writer.save_image(noise(mode="RGBA"), "txt2img", 1, TEXT)).mode == "RGB"
    settings.update({"samples_format": "webp"})
    assert Image.open(writer.save_image(noise(mode="RGBA"), "txt2img", 2, TEXT)).mode == "RGBA"


def test_quality_setting_changes_the_file_size(writer, settings):
    sizes = {}
    for file_format in ("jpg", "webp"):
        for quality in (10, 95):
            settings.update({"samples_format": file_format, "jpeg_quality": quality})
            sizes[file_format, quality] = writer.save_image(noise(), "txt2img", quality, TEXT).stat().st_size
    assert sizes["jpg", 10] * 2 < sizes["jpg", 95]
    assert sizes["webp", 10] * 2 < sizes["webp", 95]


def test_lossless_webp_keeps_every_pixel(writer, settings):
    settings.update({"samples_format": "webp", "webp_lossless": True})
    image = noise()
    saved = Image.open(writer.save_image(image, "txt2img", 1, TEXT))
    assert np.array_equal(np.asarray(saved), np.asarray(image))
    assert read_infotext(saved) == TEXT


def test_an_infotext_too_long_for_a_jpeg_exif_block_goes_to_the_txt_only(writer, settings, caplog):
    settings.update({"samples_format": "jpg", "save_txt": True})
    long_text = "x" * 40000 + "\nSteps: 1, Sampler: Euler, Seed: 1"
    with caplog.at_level(logging.WARNING):
        path = writer.save_image(noise(), "txt2img", 1, long_text)
    assert read_infotext(Image.open(path)) is None and "too long" in caplog.text
    assert path.with_suffix(".txt").read_text(encoding="utf-8") == long_text


def test_quality_and_format_are_checked(settings):
    for changes in ({"jpeg_quality": 0}, {"jpeg_quality": 101}, {"samples_format": "bmp"},
                    {"grid_format": "gif"}):
        with pytest.raises(RequestError) as error:
            settings.update(changes)
        assert error.value.field == next(iter(changes))


def test_a_picture_too_large_for_webp_is_saved_as_png(writer, settings):
    settings.update({"samples_format": "webp"})
    path = writer.save_image(Image.new("RGB", (16400, 2)), "txt2img", 3, TEXT)
    assert path.suffix == ".png" and Image.open(path).info["parameters"] == TEXT


def test_grids_use_grid_format(writer, settings):
    settings.update({"grid_format": "jpg", "samples_format": "webp"})
    path = writer.save_grid([noise(seed=i) for i in range(3)], "txt2img", TEXT, FIELDS)
    assert path.name == "grid-0000.jpg" and read_infotext(Image.open(path)) == TEXT
    assert path.parent == writer.root / "txt2img-grids" / TODAY


# File names.
def test_pattern_tags_expand(writer, settings):
    settings.update({"samples_filename_pattern":
                     "[seed]-[prompt_spaces]-[model_name]-[model_hash]-[sampler]-[steps]-[cfg]-[width]x[height]-[date]"})
    path = writer.save_image(noise(), "txt2img", 42, TEXT, FIELDS)
    assert path.name == f"00000-42-a cat, on a mat-tiny-sd1-0123456789-DPM++ 2M-20-7.0-64x48-{TODAY}.png"
    assert read_infotext(Image.open(path)) == TEXT


def test_more_tags_and_unknown_ones_left_as_typed():
    now = dt.datetime(2024, 5, 6, 7, 8, 9)
    assert expand("[prompt]|[prompt_words]|[styles]|[job_timestamp]", FIELDS, now) == \
        "a_cat,_on_a_mat|a cat on a mat|Warm|20240102030405"
    assert expand("[datetime]|[datetime<%Y>]|[date<%d.%m>]|[negative_prompt]", FIELDS, now) == \
        "20240506070809|2024|06.05|blurry"
    assert expand("[SEED]-[nope]-[seed", FIELDS, now) == "42-[nope]-[seed"
    assert expand("[styles]|[prompt_words]", ImageFields(), now) == "None|empty"


def test_default_pattern_is_the_seed_after_a_running_number(writer):
    first = writer.save_image(noise(), "txt2img", 7, TEXT)
    second = writer.save_image(noise(), "txt2img", 7, TEXT)
    assert (first.name, second.name) == ("00000-7.png", "00001-7.png")


def test_without_the_number_names_are_made_unique(writer, settings):
    settings.update({"save_images_add_number": False, "samples_filename_pattern": "[model_name]"})
    names = [writer.save_image(noise(), "txt2img", 1, TEXT, FIELDS).name for _ in range(2)]
    assert names == ["tiny-sd1.png", "tiny-sd1-1.png"]


@pytest.mark.parametrize("prompt", ["../../etc/passwd", "a/b\\c", "x" * 5000, "nul\x00line\nfeed\ttab\x7f",
                                    'what?<is>:this*|"', "..", "CON", " . "])
def test_evil_prompts_make_one_safe_file_name(writer, settings, prompt):
    settings.update({"samples_filename_pattern": "[prompt_spaces]", "directories_filename_pattern": "[prompt]"})
    folder = writer.root / "txt2img-images"
    path = writer.save_image(noise((8, 8)), "txt2img", 1, TEXT, ImageFields(seed=1, prompt=prompt))
    parts = path.relative_to(folder).parts  # a name that sanitises to nothing has no sub-folder
    assert path.is_file() and len(parts) <= 2  # one sub-folder level, no more
    for part in (*parts[:-1], path.stem):
        assert "/" not in part and "\\" not in part and ".." not in part
        assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in part)
        assert not set(part) & set('<>:"|?*')
        assert len(part) <= NAME_CHARS + 6
        assert part and not part.startswith(".") and part.upper() not in ("CON", "NUL")
    assert read_infotext(Image.open(path)) == TEXT


def test_names_stay_short_in_bytes_too():
    name = safe_name("☃" * 1000)
    assert len(name) <= NAME_CHARS and len(name.encode()) <= 180


# Folders.
def test_date_sub_folder_on_and_off(writer, settings):
    assert writer.save_image(noise(), "txt2img", 1, TEXT).parent == writer.root / "txt2img-images" / TODAY
    settings.update({"directories_filename_pattern": "[model_name]_[steps]"})
    assert writer.save_image(noise(), "txt2img", 1, TEXT, FIELDS).parent.name == "tiny-sd1_20"
    settings.update({"save_to_dirs": False, "directories_filename_pattern": ""})  # empty: [date]
    assert writer.save_image(noise(), "txt2img", 1, TEXT).parent == writer.root / "txt2img-images"
    assert writer.save_grid([noise()] * 2, "txt2img", TEXT).parent.name == TODAY  # grid_save_to_dirs
    settings.update({"grid_save_to_dirs": False})
    assert writer.save_grid([noise()] * 2, "txt2img", TEXT).parent == writer.root / "txt2img-grids"


def test_output_folders_inside_outputs_are_used(writer, settings, data_dir):
    settings.update({"outdir_txt2img_samples": "outputs/mine", "outdir_txt2img_grids": "outputs/grids-here",
                     "outdir_extras_samples": str(data_dir / "outputs" / "extra"), "save_to_dirs": False})
    assert writer.save_image(noise(), "txt2img", 1, TEXT).parent == data_dir / "outputs" / "mine"
    assert writer.save_image(noise(), "img2img", 1, TEXT).parent == data_dir / "outputs" / "img2img-images"
    assert writer.save_extras(noise(), TEXT, "upscaled").parent == data_dir / "outputs" / "extra"
    assert writer.save_grid([noise()] * 2, "txt2img", TEXT).parent.parent == data_dir / "outputs" / "grids-here"
    # One folder for every mode when set.
    settings.update({"outdir_samples": "outputs/all", "outdir_grids": "outputs/all-grids"})
    for mode in ("txt2img", "img2img"):
        assert writer.save_image(noise(), mode, 1, TEXT).parent == data_dir / "outputs" / "all"
        assert writer.save_grid([noise()] * 2, mode, TEXT).parent.parent == data_dir / "outputs" / "all-grids"
    assert writer.save_extras(noise(), TEXT, "upscaled").parent == data_dir / "outputs" / "all"


@pytest.mark.parametrize("key", FOLDER_KEYS)
@pytest.mark.parametrize("value", ["../x", "outputs/../../x", "/tmp/x", "outputs/a\x00b", "outputs\\..\\..\\x",
                                   "models"])
def test_folders_outside_outputs_are_refused(settings, data_dir, key, value):
    with pytest.raises(RequestError) as error:
        settings.update({key: value, "samples_format": "jpg"})
    assert error.value.field == key and key in error.value.message and "outputs" in error.value.message
    assert settings[key] != value and settings["samples_format"] == "png"  # nothing half-applied
    assert not (data_dir / "config.json").exists()


def test_a_symlink_pointing_outside_is_refused(settings, data_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    (data_dir / "outputs" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RequestError) as error:
        settings.update({"outdir_txt2img_samples": "outputs/link"})
    assert error.value.field == "outdir_txt2img_samples"
    with pytest.raises(RequestError):
        settings.update({"outdir_grids": "outputs/link/sub"})
    inside = data_dir / "outputs" / "real"
    inside.mkdir()
    (data_dir / "outputs" / "inner-link").symlink_to(inside, target_is_directory=True)
    settings.update({"outdir_grids": "outputs/inner-link"})  # a symlink that stays inside is fine


def test_hand_edited_config_cannot_escape(data_dir, caplog):
    (data_dir / "config.json").write_text(json.dumps(
        {"outdir_txt2img_samples": "/tmp/evil", "outdir_samples": "../../elsewhere", "samples_format": "webp"}))
    with caplog.at_level(logging.WARNING):
        settings = Settings(data_dir / "config.json")
    assert settings["outdir_txt2img_samples"] == "outputs/txt2img-images" and settings["outdir_samples"] == ""
    assert "outdir_txt2img_samples" in caplog.text and settings["samples_format"] == "webp"
    path = OutputWriter(data_dir / "outputs", settings).save_image(noise(), "txt2img", 1, TEXT)
    assert path.parent == data_dir / "outputs" / "txt2img-images" / TODAY and path.suffix == ".webp"


def test_folders_are_checked_again_at_save_time(writer, settings, data_dir, tmp_path_factory, caplog):
    """A symlink repointed after the setting was accepted, or settings that never went through
    validation, fall back to the default folder."""
    link = data_dir / "outputs" / "link"
    (data_dir / "outputs" / "real").mkdir()
    link.symlink_to(data_dir / "outputs" / "real", target_is_directory=True)
    settings.update({"outdir_txt2img_samples": "outputs/link", "save_to_dirs": False})
    assert writer.save_image(noise(), "txt2img", 1, TEXT).parent == link.resolve()
    outside = tmp_path_factory.mktemp("elsewhere")
    link.unlink()
    link.symlink_to(outside, target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        path = writer.save_image(noise(), "txt2img", 2, TEXT)
    assert path.parent == data_dir / "outputs" / "txt2img-images" and "outdir_txt2img_samples" in caplog.text
    assert os.listdir(outside) == []
    raw = OutputWriter(data_dir / "outputs", {"outdir_samples": "/tmp", "outdir_grids": "../.."})
    assert raw.save_image(noise(), "img2img", 1, TEXT).parent.parent == data_dir / "outputs" / "img2img-images"
    assert raw.save_grid([noise()] * 2, "img2img", TEXT).parent.parent == data_dir / "outputs" / "img2img-grids"


def test_save_txt_writes_the_infotext_beside_the_image(writer, settings):
    assert not writer.save_image(noise(), "txt2img", 1, TEXT).with_suffix(".txt").exists()
    settings.update({"save_txt": True, "samples_format": "jpg"})
    path = writer.save_image(noise(), "txt2img", 5, TEXT)
    assert path.with_suffix(".txt").read_text(encoding="utf-8") == TEXT
    grid = writer.save_grid([noise()] * 2, "txt2img", TEXT)
    assert grid.with_suffix(".txt").read_text(encoding="utf-8") == TEXT
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


# Through the engine: generation, grids and extras follow the settings.
@pytest.fixture
def saving_engine(engine, data_dir, settings, monkeypatch):
    """The shared engine, saving below this test's data dir with this test's settings."""
    monkeypatch.setattr(engine, "settings", settings)
    monkeypatch.setattr(engine, "writer", OutputWriter(data_dir / "outputs", settings))
    return engine


def test_generation_saves_as_the_settings_say(saving_engine, settings, data_dir):
    settings.update({"samples_format": "jpg", "grid_format": "webp", "save_txt": True,
                     "samples_filename_pattern": "[seed]-[model_name]-[sampler]-[steps]-[width]x[height]",
                     "outdir_txt2img_samples": "outputs/cubes"})
    request = GenerationRequest(prompt="a red cube", steps=2, width=64, height=64, sampler_name="Euler",
                                seed=1234, batch_size=2)
    result = saving_engine.generate(request)
    folder = data_dir / "outputs" / "cubes" / TODAY
    assert [p.name for p in result.paths] == ["00000-1234-tiny-sd1-Euler-2-64x64.jpg",
                                              "00001-1235-tiny-sd1-Euler-2-64x64.jpg"]
    for path, text in zip(result.paths, result.infotexts):
        assert path.parent == folder and read_infotext(Image.open(path)) == text
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == text
    assert result.grid_path.suffix == ".webp" and read_infotext(Image.open(result.grid_path)) == result.infotexts[0]


def test_extras_save_as_the_settings_say(saving_engine, settings, data_dir):
    settings.update({"samples_format": "webp", "outdir_extras_samples": "outputs/upscaled", "save_to_dirs": False})
    image = noise((16, 16))
    image.info["parameters"] = TEXT
    result = saving_engine.extras(ExtrasRequest(image, upscaler="Lanczos", scale=2)).outcome()
    assert result.path == data_dir / "outputs" / "upscaled" / "00000.webp"
    assert read_infotext(Image.open(result.path)) == TEXT


def test_sd_upscale_names_its_picture_by_its_own_size(saving_engine, settings, data_dir):
    settings.update({"samples_filename_pattern": "[seed]-[width]x[height]-[prompt_words]", "save_to_dirs": False})
    request = img2img_request(prompt="a red cube", steps=2, width=64, height=64,
                              sampler_name="Euler", seed=3, denoising_strength=0.5,
                              init_images=(noise((64, 64)),),
                              script=ScriptChoice("sd_upscale", {"scale": 2.0, "overlap": 16}))
    result = saving_engine.generate(request)
    assert result.paths == [data_dir / "outputs" / "img2img-images" / "00000-3-128x128-a red cube.png"]
    assert read_infotext(Image.open(result.paths[0])) == result.infotexts[0]


def test_the_api_sets_the_saving_options_and_refuses_escaping_folders(demo_server):
    import httpx

    with httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=120) as api:
        for value in ("../x", "/tmp/x"):
            response = api.post("/options", json={"outdir_txt2img_samples": value})
            assert response.status_code in (400, 422) and "outdir_txt2img_samples" in response.text
        changes = {"samples_format": "jpg", "samples_filename_pattern": "[seed]-[steps]",
                   "outdir_txt2img_samples": "outputs/api-test", "save_to_dirs": False}
        before = {key: value for key, value in api.get("/options").json().items() if key in changes}
        assert api.post("/options", json=changes).status_code == 200
        try:
            body = api.post("/txt2img", json={"prompt": "a cat", "steps": 3, "width": 64, "height": 64,
                                              "seed": 31, "save_images": True}).json()
        finally:
            api.post("/options", json=before)
    saved = demo_server.data_dir / "outputs" / "api-test" / "00000-31-3.jpg"
    assert read_infotext(Image.open(saved)) == json.loads(body["info"])["infotexts"][0]
