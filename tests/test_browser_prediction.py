"""The prediction type picker beside the checkpoint and the CFG Rescale slider, in a real browser."""

import httpx

from engine.models import prediction as predictions
from engine.output.infotext import parse
from tests.test_browser import prepare_small_job, set_number, wait_for_infotext


def test_prediction_picker_and_cfg_rescale_reach_the_picture(page, demo_server):
    prepare_small_job(page, demo_server.url, "a zero snr cat")
    try:
        page.locator("#sd_prediction input").click()
        page.get_by_role("option", name=predictions.V_ZTSNR_LABEL).click()
        options_url = demo_server.url + "/sdapi/v1/options"
        deadline_checks = 0
        while httpx.get(options_url).json()[predictions.OVERRIDES_KEY] != {"demo-tiny": predictions.V_ZTSNR_LABEL}:
            deadline_checks += 1
            assert deadline_checks < 200, httpx.get(options_url).json()[predictions.OVERRIDES_KEY]
            page.wait_for_timeout(50)
        set_number(page, "txt2img_cfg_rescale", 0.5)
        page.click("#txt2img_generate")
        _, _, params = parse(wait_for_infotext(page, "a zero snr cat"))
        assert params["CFG Rescale"] == "0.5" and params["Noise Schedule"] == "Zero Terminal SNR"
        # A new page shows the stored choice for the loaded checkpoint.
        page.reload()
        page.wait_for_function(
            "label => document.querySelector('#sd_prediction input')?.value === label",
            arg=predictions.V_ZTSNR_LABEL)
    finally:
        httpx.post(demo_server.url + "/sdapi/v1/options", json={predictions.OVERRIDES_KEY: {}})
