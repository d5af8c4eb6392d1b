"""How the page's events are wired, checked on the whole page as app.py builds it (--demo).

Gradio's page runs an "always_last" event that comes while its handler is still running once that
handler is done, but it re-sends the whole trigger, so every handler of that trigger runs again.
Two such handlers on one trigger then keep deferring and re-running each other for ever: the
walk through every tab found the three tabs' Sampling steps sliders (one handler per token
counter) sending requests in a loop and holding the browser at full CPU after two quick moves.
"""

import collections

import pytest


@pytest.fixture(scope="module")
def page_config(tmp_path_factory):
    import app
    from engine.settings.flags import parse
    from ui.layout import build_app

    ctx = app.build(parse(["--demo", "--data-dir", str(tmp_path_factory.mktemp("page"))], environ={}))
    try:
        yield build_app(ctx).get_config_file()
    finally:
        ctx.engine.shutdown()


def test_no_trigger_has_two_always_last_handlers(page_config):
    elem_ids = {c["id"]: c.get("props", {}).get("elem_id") for c in page_config["components"]}
    handlers = collections.defaultdict(list)
    for dependency in page_config["dependencies"]:
        if dependency.get("trigger_mode") == "always_last":
            for target, event in dependency["targets"]:
                handlers[(elem_ids.get(target) or target, event)].append(dependency["id"])
    assert len(handlers) > 10, "the page's always_last events were found"
    shared = {trigger: ids for trigger, ids in handlers.items() if len(ids) > 1}
    assert shared == {}


def test_the_steps_slider_updates_both_token_counters_in_one_handler(page_config):
    elem_ids = {c["id"]: c.get("props", {}).get("elem_id") for c in page_config["components"]}
    for tab in ("txt2img", "img2img", "controlnet"):
        on_release = [d for d in page_config["dependencies"]
                      if any(elem_ids.get(t) == f"{tab}_steps" and e == "release" for t, e in d["targets"])]
        assert len(on_release) == 1
        outputs = {elem_ids.get(o) for o in on_release[0]["outputs"]}
        assert outputs == {f"{tab}_prompt_token_counter", f"{tab}_neg_prompt_token_counter"}
