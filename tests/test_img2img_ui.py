"""The UI's img2img inputs, PNG Info and parameter pasting, without a browser."""

import argparse

import numpy as np
import pytest
from PIL import Image

from engine.errors import RequestError
from engine.output.writer import png_bytes
from ui import editor_inputs, img2img_requests, paste, png_info_tab
from ui.img2img_tab import folders_allowed
from ui.request_builder import request_from_ui

RED, BLUE = (255, 0, 0, 255), (0, 0, 255, 255)


def stroke_layer(size=(64, 64), box=(10, 20, 30, 26), colour=RED) -> Image.Image:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste(colour, box)
    return layer


def editor_value(background, layers) -> dict:
    composite = (background or Image.new("RGBA", layers[0].size, (255, 255, 255, 0))).convert("RGBA")
    for layer in layers:
        composite = Image.alpha_composite(composite, layer)
    return {"background": background, "layers": layers, "composite": composite}


def test_inpaint_sketch_takes_its_mask_from_the_strokes_and_its_content_from_the_composite():
    background = Image.new("RGBA", (64, 64), BLUE)
    image, mask = editor_inputs.inpaint_sketch_input(editor_value(background, [stroke_layer()]))
    assert mask.getbbox() == (10, 20, 30, 26) and set(np.unique(np.asarray(mask))) == {0, 255}
    assert image.getpixel((15, 22)) == (255, 0, 0) and image.getpixel((50, 50)) == (0, 0, 255)


def test_inpaint_keeps_the_picture_and_uses_the_strokes_as_mask():
    background = Image.new("RGBA", (64, 64), BLUE)
    layers = [stroke_layer(box=(0, 0, 8, 8)), stroke_layer(box=(40, 40, 48, 48), colour=(255, 255, 255, 128))]
    image, mask = editor_inputs.inpaint_input(editor_value(background, layers))
    assert image.getpixel((4, 4)) == (0, 0, 255), "the brush colour is not part of the picture"
    assert mask.getpixel((4, 4)) == 255 and mask.getpixel((44, 44)) == 255 and mask.getpixel((20, 20)) == 0


def test_sketch_on_a_blank_canvas_is_the_drawing_over_white():
    image = editor_inputs.sketch_input(editor_value(None, [stroke_layer()]))
    assert image.mode == "RGB"
    assert image.getpixel((15, 22)) == (255, 0, 0) and image.getpixel((50, 50)) == (255, 255, 255)


def test_missing_pictures_get_a_message():
    with pytest.raises(RequestError, match="No picture to inpaint"):
        editor_inputs.inpaint_input(None)
    with pytest.raises(RequestError, match="No mask"):
        editor_inputs.upload_input(Image.new("RGB", (8, 8)), None)


UI_DEFAULTS = {"prompt": "", "negative_prompt": "", "sampler_name": "DPM++ 2M", "scheduler": "Automatic",
               "steps": 20, "cfg_scale": 7.0, "width": 512, "height": 512, "batch_size": 1, "n_iter": 1,
               "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_w": 0,
               "seed_resize_from_h": 0, "subseed_show": False, "styles": []}


def test_pasted_parameters_rebuild_the_same_request_and_image(engine):
    from tests.test_generation import BASE
    made = engine.generate(BASE.replace(seed=31337, prompt="a (red:1.3) cube", sampler_name="Euler a",
                                        subseed=5, subseed_strength=0.25))
    values = {**UI_DEFAULTS, **paste.control_values(made.infotexts[0])}
    again = engine.generate(request_from_ui(values).replace(save_images=False, save_grid=False))
    assert again.infotexts[0] == made.infotexts[0]
    assert png_bytes(again.images[0], again.infotexts[0]) == png_bytes(made.images[0], made.infotexts[0])


def test_a_pasted_rng_and_clip_skip_become_override_entries_that_remake_the_picture(engine, tmp_path):
    from engine.settings.store import Settings
    from tests.test_generation import BASE
    made = engine.generate(BASE.replace(seed=77, randn_source="CPU", clip_skip=2))
    text = made.infotexts[0]
    assert "RNG: CPU" in text and "Clip skip: 2" in text
    values = paste.control_values(text)
    assert values["override_settings"] == ["RNG: CPU", "Clip skip: 2"]
    assert "randn_source" not in values and "clip_skip" not in values
    again = engine.generate(request_from_ui({**UI_DEFAULTS, **values}).replace(save_images=False,
                                                                                  save_grid=False))
    assert png_bytes(again.images[0], again.infotexts[0]) == png_bytes(made.images[0], made.infotexts[0])
    # Entries equal to the current settings are left out; A1111's infotexts name no RNG for its
    # default (GPU) noise, so a user whose setting is CPU gets "RNG: GPU" back.
    settings = Settings(tmp_path / "config.json")
    settings.update({"randn_source": "CPU"})
    assert paste.control_values(text, settings=settings)["override_settings"] == ["Clip skip: 2"]
    a1111 = "cat\nSteps: 5, Sampler: Euler, CFG scale: 6, Seed: 9, Size: 64x64"
    assert paste.control_values(a1111, settings=settings)["override_settings"] == ["RNG: GPU"]
    assert request_from_ui({**UI_DEFAULTS, "override_settings": ["RNG: NV"]}).randn_source == "NV"
    for damaged in (["RNG NV"], ["Sampler: Euler"], ["Clip skip: two"]):
        with pytest.raises(RequestError, match="override setting"):
            request_from_ui({**UI_DEFAULTS, "override_settings": damaged})
    with pytest.raises(RequestError, match="random number source"):
        request_from_ui({**UI_DEFAULTS, "override_settings": ["RNG: Moon"]})


def test_send_seed_and_size_settings_are_honoured():
    text = "cat\nSteps: 5, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 9, Size: 96x64"
    values = paste.control_values(text, send_seed=False, send_size=False)
    assert "seed" not in values and "width" not in values
    assert (values["sampler_name"], values["scheduler"]) == ("DPM++ 2M", "Karras")
    assert paste.control_values(text)["seed"] == 9


# Infotexts as the wider ecosystem writes them (COMPAT.md), written by hand.
ECOSYSTEM_INFOTEXTS = [
    ("masterpiece, 1girl, (detailed eyes:1.2), <lora:styleA:0.8>\n"
     "Negative prompt: lowres, bad anatomy\n"
     "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234567890, Size: 512x768, "
     "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, "
     'Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Lora hashes: "styleA: 0123456789ab", '
     "Version: v1.10.1",
     {"seed": 1234567890, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "width": 512,
      "height": 768, "cfg_scale": 6.5, "denoising_strength": 0.45, "steps": 28}),
    ("a house\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 5, "
     "Size: 640x512, Model hash: abc, Model: m, Denoising strength: 0.6, Mask blur: 8, "
     "Masked content: latent noise, Inpaint area: Only masked, Masked area padding: 48, "
     'ControlNet 0: "Module: canny, Model: control_sd15_canny, Weight: 1", Version: v1.10.1',
     {"mask_blur": 8, "inpainting_fill": "latent noise", "inpaint_full_res": "Only masked",
      "inpaint_full_res_padding": 48, "width": 640}),
    ("multi\nline prompt\nNegative prompt: neg\nsecond neg line\nSteps: 4, Sampler: UniPC, "
     "CFG scale: 3, Seed: 1, Size: 64x64, Variation seed: 77, Variation seed strength: 0.3",
     {"prompt": "multi\nline prompt", "negative_prompt": "neg\nsecond neg line", "subseed": 77,
      "subseed_strength": 0.3, "subseed_show": True}),
]


@pytest.mark.parametrize("text, expected", ECOSYSTEM_INFOTEXTS)
def test_png_info_reads_ecosystem_files_and_paste_fills_their_fields(tmp_path, text, expected):
    path = tmp_path / "theirs.png"
    path.write_bytes(png_bytes(Image.new("RGB", (8, 8)), text))
    read_text, table = png_info_tab.read(str(path), 16.0)
    assert read_text == text
    assert "<th>Negative prompt</th>" in table and "<th>Seed</th>" in table
    values = paste.control_values(text)
    for name, value in expected.items():
        assert values[name] == value, name


def test_png_info_on_a_plain_or_broken_file(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert png_info_tab.read(str(plain), 16.0) == ("", "<p>This image holds no generation parameters.</p>")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    text, table = png_info_tab.read(str(broken), 16.0)
    assert text == "" and "not an image" in table


def _values(**changes) -> dict:
    values = {**UI_DEFAULTS, "subtab": "img2img", "resize_mode": "Just resize", "denoising_strength": 0.75,
              "mask_blur": 4, "mask_mode": "Inpaint masked", "inpainting_fill": "original",
              "inpaint_area": "Whole picture", "inpaint_full_res_padding": 32, "resize_tab": "Resize to",
              "scale": 1.0, "script": "None"}
    values.update(changes)
    return values


def test_resize_by_scales_the_pictures_size_onto_the_grid():
    picture = Image.new("RGBA", (300, 200))
    [(_, request)] = img2img_requests.requests_from_ui(
        _values(init_image=picture, resize_tab="Resize by", scale=1.5), 16.0)
    assert (request.width, request.height) == (448, 304)  # 450 and 300, to the nearest multiple of 8
    assert request.img2img.mask is None and request.mode == "img2img"


def test_batch_pairs_masks_with_pictures_by_name(tmp_path):
    pictures, masks = tmp_path / "in", tmp_path / "masks"
    pictures.mkdir()
    masks.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (64, 64), "red").save(pictures / f"{name}.png")
    Image.new("L", (64, 64), 255).save(masks / "b.png")
    (pictures / "notes.txt").write_text("not a picture")
    jobs = list(img2img_requests.requests_from_ui(
        _values(subtab="Batch", batch_input_dir=str(pictures), batch_mask_dir=str(masks)), 16.0))
    assert [name for name, _ in jobs] == ["a.png", "b.png"]
    assert jobs[0][1].img2img.mask is None and jobs[1][1].img2img.mask is not None
    with pytest.raises(RequestError, match="folder not found"):
        list(img2img_requests.requests_from_ui(_values(subtab="Batch", batch_input_dir=str(tmp_path / "x")), 16.0))


def test_server_folders_are_only_offered_to_an_unshared_ui():
    def flags(**kw):
        return argparse.Namespace(**{"listen": False, "share": False, "allow_server_folders": False, **kw})

    class Ctx:
        def __init__(self, namespace):
            self.flags = namespace

    assert folders_allowed(Ctx(flags()))
    assert not folders_allowed(Ctx(flags(listen=True)))
    assert not folders_allowed(Ctx(flags(share=True)))
    assert folders_allowed(Ctx(flags(listen=True, allow_server_folders=True)))
    assert not folders_allowed(Ctx(flags(hide_ui_dir_config=True)))  # as A1111's flag does


def test_outpainting_script_fields_reach_the_request():
    [(_, request)] = img2img_requests.requests_from_ui(
        _values(init_image=Image.new("RGB", (64, 64)), width=64, height=64, script="outpainting",
                **{"script::outpainting::pixels": 32.0, "script::outpainting::mask_blur": 6.0,
                   "script::outpainting::inpainting_fill": "latent nothing",
                   "script::outpainting::directions": ["up"], "script::sd_upscale::scale": 3.0}), 16.0)
    assert request.script.name == "outpainting"
    assert dict(request.script.options) == {"pixels": 32.0, "mask_blur": 6.0, "inpainting_fill": "latent nothing",
                                            "directions": ["up"]}
    assert np.asarray(request.img2img.init_images[0]).shape == (64, 64, 3)


def test_sd_upscale_script_fields_reach_the_request():
    [(_, request)] = img2img_requests.requests_from_ui(
        _values(init_image=Image.new("RGB", (64, 64)), width=64, height=64, script="sd_upscale",
                **{"script::sd_upscale::scale": 2.5, "script::sd_upscale::overlap": 32.0,
                   "script::sd_upscale::upscaler": "Nearest"}), 16.0)
    assert (request.script.name, dict(request.script.options)) == ("sd_upscale", {"scale": 2.5, "overlap": 32.0,
                                                                                  "upscaler": "Nearest"})
