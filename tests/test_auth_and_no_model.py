"""A server with logins and no model: nobody gets in without credentials, and it says what to do.

The servers run in this process (InProcessServer): what is tested is what they answer over HTTP,
not their start; the download offer's test runs the app as its own process."""

import httpx
import pytest

from tests.support.fake_host import FileHost
from tests.support.server import AppServer, InProcessServer


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("locked-server")
    # No model hub can be reached (a closed port stands in for it): no download is offered.
    with InProcessServer(data, "--api", "--api-auth", "api:secret", "--gradio-auth", "ui:pass",
                         env={"HF_ENDPOINT": "http://127.0.0.1:9"}) as server:
        yield server


def test_api_requires_its_credentials(locked_server):
    url = locked_server.url + "/sdapi/v1/sd-models"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, auth=("api", "wrong")).status_code == 401
    assert httpx.get(url, auth=("ui", "pass")).status_code == 401  # UI logins are not API logins
    response = httpx.get(url, auth=("api", "secret"))
    assert response.status_code == 200 and response.json() == []


def test_ui_requires_a_login(locked_server):
    assert httpx.get(locked_server.url + "/config").status_code == 401
    bad = httpx.post(locked_server.url + "/login", data={"username": "ui", "password": "nope"})
    assert bad.status_code >= 400
    with httpx.Client(base_url=locked_server.url) as client:
        assert client.post("/login", data={"username": "ui", "password": "pass"}).status_code == 200
        assert client.get("/config").status_code == 200


def test_generation_without_a_model_says_how_to_add_one(locked_server):
    response = httpx.post(locked_server.url + "/sdapi/v1/txt2img", auth=("api", "secret"),
                          json={"prompt": "x", "steps": 2, "width": 64, "height": 64}, timeout=60)
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "No checkpoint is loaded" in detail
    assert str(locked_server.data_dir / "models" / "Stable-diffusion") in detail


def test_api_uses_the_ui_logins_when_no_api_auth_is_given(tmp_path):
    with InProcessServer(tmp_path, "--api", "--gradio-auth", "ui:pass") as server:
        url = server.url + "/sdapi/v1/options"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, auth=("ui", "pass")).status_code == 200


def test_browser_login_then_the_no_model_notice(page, locked_server):
    page.goto(locked_server.url)
    page.get_by_label("username").fill("ui")
    page.get_by_label("password").fill("pass")
    page.get_by_role("button", name="Login").click()
    notice = page.locator("#no_model_text")
    notice.get_by_text("No checkpoint yet").wait_for()
    assert str(locked_server.data_dir / "models" / "Stable-diffusion") in notice.inner_text()
    page.click("#txt2img_generate")
    page.locator("#txt2img_message").get_by_text("No checkpoint is loaded").wait_for()
    assert not page.locator("#download_model").is_visible()


def test_download_offer_streams_with_progress_and_refuses_a_wrong_file(page, tmp_path):
    """With a reachable hub (a local stand-in via HF_ENDPOINT), the UI offers SD 1.5, streams it
    with a progress bar, and throws it away when its sha256 is not the published one."""
    with FileHost() as hub, AppServer(tmp_path, env={"HF_ENDPOINT": hub.url}) as server:
        page.goto(server.url)
        button = page.locator("#download_model")
        button.wait_for()
        assert "Stable Diffusion 1.5" in button.inner_text()
        button.click()
        page.locator("#download_progress").get_by_text("does not match").wait_for()
        folder = tmp_path / "models" / "Stable-diffusion"
        assert list(folder.iterdir()) == []
