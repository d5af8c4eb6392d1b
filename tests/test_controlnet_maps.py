"""The ControlNet units' detected maps come back with the pictures, as the ControlNet extension
returns them: in the API's `images` after the pictures (one per unit with `save_detected_map`
on, hires passes adding the map at their size first), none with `control_net_no_detectmap`, and
saved beside the outputs under detected_maps/<preprocessor>/ when the job saves its pictures."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from engine.controlnet.units import ControlUnit
from engine.output.history import SavedImages
from engine.output.writer import OutputWriter
from engine.runs.detected_maps import framed
from tests.test_api_controlnet import SMALL, unit
from tests.test_api_img2img import decode
from tests.test_controlnet import drawing


@pytest.fixture(scope="module")
def server(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=120) as client:
        yield client


def _post(server, units, **fields):
    body = {**SMALL, **fields, "alwayson_scripts": {"controlnet": {"args": units}}}
    response = server.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _detected(server, module: str, size: tuple[int, int], **fields) -> Image.Image:
    """The unit's map as /controlnet/detect makes it, framed to the picture (Crop and Resize)."""
    from tests.test_api_img2img import b64
    response = server.post("/controlnet/detect", json={
        "controlnet_module": module, "controlnet_input_images": [b64(drawing())],
        "controlnet_processor_res": 512, **fields})
    assert response.status_code == 200, response.text
    return framed(decode(response.json()["images"][0]), *size, "Crop and Resize")


def test_each_units_map_follows_the_pictures_in_unit_order(server):
    answer = _post(server, [unit(module="canny"), unit(module="invert")], batch_size=2)
    info = json.loads(answer["info"])
    pictures = len(info["infotexts"])   # the pictures (and a grid, when one is returned)
    assert pictures >= 2 and len(answer["images"]) == pictures + 2
    maps = [np.asarray(decode(image).convert("RGB")) for image in answer["images"][pictures:]]
    for found, module in zip(maps, ("canny", "invert")):
        assert found.shape == (64, 64, 3)
        assert np.array_equal(found, np.asarray(_detected(server, module, (64, 64)))), module
    assert not np.array_equal(maps[0], maps[1])


def test_save_detected_map_false_and_the_setting_leave_maps_out(server):
    answer = _post(server, [unit(module="canny", save_detected_map=False), unit(module="invert")])
    assert len(answer["images"]) == 2   # the picture, then invert's map only
    assert np.array_equal(np.asarray(decode(answer["images"][1]).convert("RGB")),
                          np.asarray(_detected(server, "invert", (64, 64))))
    quiet = _post(server, [unit(module="canny")], override_settings={"control_net_no_detectmap": True})
    assert len(quiet["images"]) == 1
    bad = server.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [
        unit(save_detected_map="sometimes")]}}})
    assert bad.status_code == 422 and "save_detected_map" in bad.text


def test_a_hires_pass_adds_the_map_at_its_size_first(server):
    answer = _post(server, [unit(module="canny")], enable_hr=True, hr_scale=2, denoising_strength=0.5,
                   hr_second_pass_steps=2)
    assert len(answer["images"]) == 3
    hires, first = (decode(image) for image in answer["images"][1:])
    assert hires.size == (128, 128) and first.size == (64, 64)
    assert np.array_equal(np.asarray(hires.convert("RGB")), np.asarray(_detected(server, "canny", (128, 128))))


def test_maps_are_saved_beside_the_pictures_and_kept_out_of_history(server, demo_server):
    folder = demo_server.data_dir / "outputs" / "txt2img-images" / "detected_maps" / "canny"
    before = set(folder.glob("*.png")) if folder.is_dir() else set()
    answer = _post(server, [unit(module="canny")], save_images=True)
    [saved] = set(folder.glob("*.png")) - before
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")),
                          np.asarray(decode(answer["images"][1]).convert("RGB")))
    _post(server, [unit(module="canny")], save_images=True,
          override_settings={"control_net_detectmap_autosaving": False})
    assert len(set(folder.glob("*.png")) - before) == 1
    # The History tab lists the pictures, not the maps saved beside them.
    listed = SavedImages(OutputWriter(demo_server.data_dir / "outputs")).newest_first("all")
    assert listed and not any("detected_maps" in item.name for item in listed)


def test_an_inpaint_map_shows_its_masked_part_half_transparent():
    picture = Image.new("RGB", (32, 32), (200, 100, 50))
    marked = picture.copy()
    alpha = Image.new("L", (32, 32), 255)
    alpha.paste(0, (0, 0, 16, 32))   # the left half is repainted (alpha 0 in an inpaint map)
    marked.putalpha(alpha)
    shown = np.asarray(framed(marked, 64, 64, "Just Resize"))
    assert shown.shape == (64, 64, 4)
    assert shown[10, 5, 3] == 128 and shown[10, 60, 3] == 255
    assert tuple(shown[10, 60, :3]) == (200, 100, 50)
    assert ControlUnit().save_detected_map is True
