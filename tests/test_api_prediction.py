"""The prediction override, the noise schedule and CFG Rescale through the HTTP API, on the demo
model: a timestep sampler on an EDM model is refused by name with a 4xx, the override travels in
override_settings for one request or is stored with POST /options."""

from __future__ import annotations

import json

import httpx
import pytest

from engine.models import prediction as predictions
from engine.models.registry import BUILTIN_DEMO
from tests.support.server import InProcessServer

SMALL = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with InProcessServer(tmp_path_factory.mktemp("api-prediction"), "--demo", "--api") as app:
        yield app


def _post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/sdapi/v1/{route}", json=body, timeout=120)


def _edm_override(server) -> dict:
    # By name: the demo model may still be loading when the first request is sent.
    return {predictions.OVERRIDES_KEY: {BUILTIN_DEMO: predictions.EDM_LABEL}}


def test_timestep_sampler_on_an_edm_model_is_refused_by_name(server):
    response = _post(server, "txt2img", {**SMALL, "sampler_name": "DDIM",
                                         "override_settings": _edm_override(server)})
    assert 400 <= response.status_code < 500, response.text
    assert "DDIM cannot sample" in response.text and "EDM model" in response.text


def test_edm_override_for_one_request_then_as_before(server):
    response = _post(server, "txt2img", {**SMALL, "sampler_name": "Euler",
                                         "override_settings": _edm_override(server)})
    assert response.status_code == 200, response.text
    model = server.ctx.engine.models.current
    assert model.prediction.source == "override" and model.is_edm
    assert server.ctx.settings[predictions.OVERRIDES_KEY] == {}  # restored afterwards
    response = _post(server, "txt2img", {**SMALL, "sampler_name": "DDIM"})
    assert response.status_code == 200, response.text
    assert server.ctx.engine.models.current.prediction_type == "epsilon"


def test_stored_override_and_its_bad_values(server):
    bad = _post(server, "options", {predictions.OVERRIDES_KEY: {"x.safetensors": "sideways"}})
    assert 400 <= bad.status_code < 500 and "sideways" in bad.text
    try:
        assert _post(server, "options", _edm_override(server)).status_code == 200
        response = _post(server, "txt2img", {**SMALL, "sampler_name": "PLMS"})
        assert 400 <= response.status_code < 500 and "PLMS cannot sample" in response.text
    finally:
        _post(server, "options", {predictions.OVERRIDES_KEY: {}})


@pytest.mark.parametrize("field", ["rescale_cfg", "cfg_rescale"])
def test_cfg_rescale_and_noise_schedule_reach_the_infotext(server, field):
    response = _post(server, "txt2img", {**SMALL, field: 0.5,
                                         "override_settings": {"sd_noise_schedule": "Zero Terminal SNR"}})
    assert response.status_code == 200, response.text
    text = json.loads(response.json()["info"])["infotexts"][0]
    assert "CFG Rescale: 0.5" in text and "Noise Schedule: Zero Terminal SNR" in text
    again = _post(server, "txt2img", {**SMALL, "infotext": text})  # read back from the infotext
    assert "CFG Rescale: 0.5" in json.loads(again.json()["info"])["infotexts"][0]


def test_cfg_rescale_out_of_range_is_named(server):
    response = _post(server, "txt2img", {**SMALL, "rescale_cfg": 3})
    assert response.status_code in (400, 422) and "cfg_rescale" in response.text
