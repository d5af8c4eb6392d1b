"""Gradio's API routes asked for an event or component the app does not have, on the real server:
each answers 404 with a message saying what was not found, never a 500 with a traceback in the
log (ui/gradio_endpoints.py); the page's own calls, by fn_index, still go through."""

from __future__ import annotations

import httpx
import pytest

from ui.gradio_endpoints import Lookup, lookup_for

SESSION = "unknown-routes-test"
UNKNOWN_INDEX = 999_999

# (method, path, JSON body, words the 404 says)
UNKNOWN = [
    ("POST", "/gradio_api/call/v2/no_such_event", {"data": {}}, "No API endpoint named 'no_such_event'"),
    ("POST", "/gradio_api/call/v2/no_such_event/", {"data": {}}, "No API endpoint named 'no_such_event'"),
    ("POST", "/gradio_api/call/no_such_event", {"data": []}, "No API endpoint named 'no_such_event'"),
    ("GET", "/gradio_api/call/no_such_event/some-event-id", None, "No API endpoint named 'no_such_event'"),
    ("GET", "/gradio_api/call/v2/no_such_event/some-event-id", None, "No API endpoint named 'no_such_event'"),
    ("GET", "/gradio_api/call/v2/no_such_event", None, "No API endpoint named 'v2'"),
    ("POST", "/gradio_api/run/no_such_event", {"data": []}, "No API endpoint named 'no_such_event'"),
    ("POST", "/gradio_api/api/no_such_event", {"data": []}, "No API endpoint named 'no_such_event'"),
    ("POST", "/gradio_api/run/predict", {"data": []}, "No API endpoint named 'predict'"),
    ("POST", "/gradio_api/run/predict", {"data": [], "fn_index": UNKNOWN_INDEX}, f"Unknown fn_index {UNKNOWN_INDEX}"),
    ("POST", "/gradio_api/api/predict/", {"data": [], "fn_index": -1}, "Unknown fn_index -1"),
    ("POST", "/gradio_api/queue/join", {"data": [], "fn_index": UNKNOWN_INDEX, "session_hash": SESSION},
     f"Unknown fn_index {UNKNOWN_INDEX}"),
    ("POST", "/gradio_api/queue/join", {"data": [], "fn_index": "-5", "session_hash": SESSION}, "Unknown fn_index -5"),
    ("POST", "/gradio_api/component_server", {"data": None, "component_id": UNKNOWN_INDEX, "fn_name": "x",
                                              "session_hash": SESSION}, f"Unknown component_id {UNKNOWN_INDEX}"),
]


@pytest.mark.parametrize("method, path, body, words", UNKNOWN, ids=[f"{m} {p} {b}" for m, p, b, _ in UNKNOWN])
def test_an_unknown_name_or_index_is_a_404_with_a_message(demo_server, method, path, body, words):
    logged = len(demo_server.log())
    response = httpx.request(method, demo_server.url + path, json=body, timeout=30)
    assert response.status_code == 404, (response.status_code, response.text[:300])
    assert words in response.json()["detail"]
    assert "Traceback" not in demo_server.log()[logged:]


@pytest.mark.parametrize("path", ["/gradio_api/info", "/gradio_api/info?all_endpoints=true"])
def test_the_api_info_lists_no_named_endpoint(demo_server, path):
    response = httpx.get(demo_server.url + path, timeout=30)
    assert response.status_code == 200 and response.json()["named_endpoints"] == {}


def _event_of(url: str, elem_id: str) -> dict:
    config = httpx.get(url + "/config", timeout=30).json()
    ids = {c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id}
    return next(d for d in config["dependencies"] if any(t[0] in ids for t in d["targets"]))


def test_the_pages_own_calls_by_index_still_go_through(demo_server):
    refresh = _event_of(demo_server.url, "extensions_refresh")  # no inputs, not queued
    answer = httpx.post(demo_server.url + "/gradio_api/run/predict", timeout=60,
                        json={"data": [], "fn_index": refresh["id"], "session_hash": SESSION})
    assert answer.status_code == 200 and "extensions-table" in answer.json()["data"][0]
    # A body Gradio itself refuses keeps Gradio's own answer.
    refused = httpx.post(demo_server.url + "/gradio_api/queue/join", timeout=60,
                         json={"data": [], "fn_index": "x", "session_hash": SESSION})
    assert refused.status_code == 422


@pytest.mark.parametrize("method, path, lookup", [
    ("POST", "/gradio_api/run/a", Lookup(name="a", index_in_body=True)),
    ("POST", "/gradio_api/call/v2/a/", Lookup(name="a")),
    ("GET", "/gradio_api/call/a/event", Lookup(name="a")),
    ("POST", "/gradio_api/queue/join", Lookup(index_in_body=True)),
    ("POST", "/gradio_api/component_server/", Lookup(component_in_body=True)),
    ("GET", "/gradio_api/run/a", None),          # no such route: Gradio's own 404/405
    ("POST", "/gradio_api/upload", None),
    ("GET", "/gradio_api/queue/data", None),
    ("POST", "/sdapi/v1/txt2img", None),
])
def test_only_the_routes_that_look_an_event_up_are_checked(method, path, lookup):
    assert lookup_for(method, path) == lookup
