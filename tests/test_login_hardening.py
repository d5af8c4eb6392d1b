"""A studio shared on the LAN, against a real server: password guessing is throttled, other sites
cannot make a visitor's browser change anything, and UI and API logins stay separate."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.server import AppServer
from ui.login_throttle import LoginThrottle, ThrottlePolicy

UI_LOGIN = ("ui", "hunter2")
API_LOGIN = ("api", "s3cret")
FORBIDDEN_WORDS = "Cross-site request refused"
STATE_CHANGES = ("interrupt", "skip", "unload-checkpoint", "reload-checkpoint", "refresh-checkpoints",
                 "refresh-loras", "refresh-embeddings", "refresh-vae", "merge-checkpoints")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_wait_longer_each_time_then_lock_out():
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    policy = throttle.policy
    waits = []
    for _ in range(policy.lockout_failures):
        assert throttle.retry_after("10.0.0.9", "admin") == 0  # each try below is made once allowed
        waits.append(throttle.failed("10.0.0.9", "admin", "test"))
        clock.now += waits[-1]
    assert waits == [0, 0, 0, 0, 0, 1, 2, 4, 8, 300]
    clock.now -= 300
    assert throttle.retry_after("10.0.0.9", "someone-else") == 300  # the address is locked, any name
    clock.now += 299.5
    assert throttle.retry_after("10.0.0.9", "admin") == 1
    clock.now += 1
    assert throttle.retry_after("10.0.0.9", "admin") == 0
    # An eleventh failure locks out again at once; quiet for the forget time, it starts anew.
    assert throttle.failed("10.0.0.9", "admin", "test") == 300
    clock.now += policy.forget_after_s + policy.lockout_s
    assert throttle.retry_after("10.0.0.9", "admin") == 0
    assert throttle.failed("10.0.0.9", "admin", "test") == 0


def test_guessing_one_name_from_many_addresses_does_not_lock_out_the_owner():
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for attacker in range(12):  # one failure from each of 12 addresses, all as "owner"
        assert throttle.retry_after(f"10.0.1.{attacker}", "owner") == 0
        throttle.failed(f"10.0.1.{attacker}", "owner", "test")
    # The user name is now locked for the addresses that failed...
    assert throttle.retry_after("10.0.1.3", "owner") == 300
    # ...but not for the owner's machine, which never typed a wrong password.
    assert throttle.retry_after("10.0.0.2", "owner") == 0
    throttle.succeeded("10.0.0.2", "owner")
    assert throttle.retry_after("10.0.1.3", "owner") == 0  # the owner's success cleared the name
    assert throttle.retry_after("10.0.1.3", "other") == 0  # one failure there: no wait of its own


def test_records_stay_bounded_under_a_flood_of_names():
    from ui import login_throttle

    clock = Clock()
    throttle = LoginThrottle(ThrottlePolicy(), clock=clock)
    for index in range(login_throttle.MAX_RECORDS + 500):
        throttle.failed(f"10.1.{index // 250}.{index % 250}", "x" * 5000 + str(index), "test")
        clock.now += 0.001
    assert len(throttle._records) <= login_throttle.MAX_RECORDS


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    data = tmp_path_factory.mktemp("hardening")
    with AppServer(data, "--api", "--listen", "--gradio-auth", ":".join(UI_LOGIN),
                   "--api-auth", ":".join(API_LOGIN), "--cors-allow-origins", "http://trusted.lan:3000") as server:
        yield server


def client(address: str) -> httpx.Client:
    """A client that connects from another loopback address, so the server sees another machine."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60)


def test_the_login_form_throttles_guessing_and_the_owner_still_gets_in(studio):
    guesser, owner = client("127.0.0.2"), client("127.0.0.3")
    login = studio.url + "/login"
    for attempt in range(6):
        response = guesser.post(login, data={"username": "ui", "password": f"guess{attempt}"})
        assert response.status_code == 400, attempt
    throttled = guesser.post(login, data={"username": "ui", "password": UI_LOGIN[1]})
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    assert "wait 1 s" in throttled.json()["detail"]
    # The right password from another machine is not held back by someone else's guessing.
    assert owner.post(login, data={"username": "ui", "password": UI_LOGIN[1]}).status_code == 200
    time.sleep(1.1)
    assert guesser.post(login, data={"username": "ui", "password": "guess7"}).status_code == 400
    again = guesser.post(login, data={"username": "ui", "password": "guess8"})
    assert again.status_code == 429 and again.headers["Retry-After"] == "2"
    # The owner's next login clears the name's count (so later tests start afresh).
    assert owner.post(login, data=dict(zip(("username", "password"), UI_LOGIN))).status_code == 200
    log = studio.log()
    assert "login: failed from 127.0.0.2 as 'ui' (login form), 6 in a row; next try in 1 s" in log
    assert "guess" not in log and UI_LOGIN[1] not in log  # passwords are never logged


def test_http_basic_is_throttled_too(studio):
    guesser, options = client("127.0.0.4"), studio.url + "/sdapi/v1/options"
    for attempt in range(6):
        assert guesser.get(options, auth=("api", f"no{attempt}")).status_code == 401
    throttled = guesser.get(options, auth=API_LOGIN)  # right, but too early
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    assert client("127.0.0.5").get(options, auth=API_LOGIN).status_code == 200
    # A UI page guessed over HTTP Basic counts the same way.
    ui_guesser = client("127.0.0.6")
    for attempt in range(7):
        status = ui_guesser.get(studio.url + "/config", auth=("guest", f"no{attempt}")).status_code
    assert status == 429


def test_only_the_docs_page_asks_the_browser_for_credentials(studio):
    refused = httpx.post(studio.url + "/sdapi/v1/interrupt")
    assert refused.status_code == 401 and "www-authenticate" not in refused.headers
    assert "www-authenticate" not in httpx.get(studio.url + "/config").headers
    assert httpx.get(studio.url + "/docs").headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("route", STATE_CHANGES)
def test_another_sites_form_cannot_change_anything(studio, route):
    url = f"{studio.url}/sdapi/v1/{route}"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for headers in ({"Origin": "http://evil.example", **form},
                    {"Origin": "null", **form},  # a sandboxed frame or a file
                    {"Origin": f"http://127.0.0.1:{studio.port + 1}"},  # another port is another site
                    {"Sec-Fetch-Site": "cross-site", **form}):
        response = httpx.post(url, auth=API_LOGIN, headers=headers, content=b"a=1")
        assert response.status_code == 403, headers
        assert FORBIDDEN_WORDS in response.json()["detail"]


def test_scripts_the_server_itself_and_trusted_sites_still_change_things(studio):
    url = studio.url + "/sdapi/v1/refresh-checkpoints"
    assert httpx.post(url, auth=API_LOGIN).status_code == 200  # a script: no Origin
    assert httpx.post(url, auth=API_LOGIN, headers={"Origin": studio.url,
                                                    "Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert httpx.post(url, auth=API_LOGIN, headers={"Origin": "http://trusted.lan:3000"}).status_code == 200
    # Reading stays open to any origin's request (the browser keeps the answer from the page).
    assert httpx.get(studio.url + "/sdapi/v1/samplers", auth=API_LOGIN,
                     headers={"Origin": "http://evil.example"}).status_code == 200


def test_api_logins_do_not_open_the_ui_nor_ui_logins_the_api(studio):
    for method, path in (("GET", "/config"), ("POST", "/gradio_api/cancel"), ("POST", "/gradio_api/reset"),
                         ("GET", "/gradio_api/info"), ("GET", "/file=README.md")):
        assert httpx.request(method, studio.url + path, auth=API_LOGIN).status_code == 401, path
    with httpx.Client(base_url=studio.url) as session:  # a UI login's session does open them
        assert session.post("/login", data=dict(zip(("username", "password"), UI_LOGIN))).status_code == 200
        assert session.get("/config").status_code == 200
    assert httpx.get(studio.url + "/sdapi/v1/options", auth=UI_LOGIN).status_code == 401
    # The login form takes only UI logins.
    assert httpx.post(studio.url + "/login", data=dict(zip(("username", "password"), API_LOGIN))).status_code == 400


def test_the_login_page_says_how_long_to_wait(page, studio):
    page.goto(studio.url.replace("127.0.0.1", "localhost"))
    for attempt in range(7):
        page.get_by_label("username").fill("ui")
        page.get_by_label("password").fill(f"wrong{attempt}")
        page.get_by_role("button", name="Login").click()
        message = page.locator("#login_message")
        if attempt < 6:
            message.get_by_text("Incorrect user name or password").wait_for()
            page.wait_for_function("() => !document.querySelector('#login_button').disabled")
            page.evaluate("() => document.querySelector('#login_message').textContent = ''")
    message.get_by_text("Too many attempts, wait").wait_for()
    assert page.locator("#login_button").is_disabled()
    # The wait runs out, and the right password then gets in.
    page.wait_for_function("() => !document.querySelector('#login_button').disabled", timeout=10_000)
    page.get_by_label("password").fill(UI_LOGIN[1])
    page.get_by_role("button", name="Login").click()
    page.locator("#txt2img_prompt").wait_for()
