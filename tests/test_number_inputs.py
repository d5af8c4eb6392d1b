"""Number boxes and sliders take what the user is typing: a value outside their range, or an empty
box, reaches the handlers (which cope, or refuse it in words naming the field) instead of failing
in Gradio before any handler runs (an HTTP 500 and a traceback per keystroke)."""

import gradio as gr
import pytest

from engine.errors import RequestError
from ui.number_inputs import Number, Slider, typed_number


@pytest.fixture(scope="module")
def page_blocks(tmp_path_factory):
    """The app's whole page, built in this process as app.py builds it (--demo)."""
    import app
    from engine.settings.flags import parse
    from ui.layout import build_app

    ctx = app.build(parse(["--demo", "--data-dir", str(tmp_path_factory.mktemp("page"))], environ={}))
    try:
        yield ctx, build_app(ctx)
    finally:
        ctx.engine.shutdown()


def test_values_out_of_range_or_missing_pass_through():
    slider = Slider(1, 150, step=1, value=20)
    assert [slider.preprocess(v) for v in (-5, 99999, 0, 20)] == [-5, 99999, 0, 20]
    assert slider.preprocess(None) is None
    whole = Number(minimum=0, maximum=10, precision=0)
    assert whole.preprocess(99.6) == 100 and isinstance(whole.preprocess(3.0), int)
    assert typed_number("12.5", None) == 12.5
    for junk in ("abc", True, [1], float("inf"), float("nan")):
        assert typed_number(junk, 0) is None


def test_every_number_input_of_every_tab_takes_out_of_range_values(page_blocks):
    _, blocks = page_blocks
    numeric = [b for b in blocks.blocks.values() if isinstance(b, (gr.Slider, gr.Number))]
    assert len(numeric) > 50, "the page's sliders and number boxes were found"
    for component in numeric:
        low = component.minimum if component.minimum is not None else 0
        high = component.maximum if component.maximum is not None else 100
        for value in (low - 5, high + 99999, None):
            try:
                component.preprocess(value)
            except Exception as error:
                pytest.fail(f"{component.elem_id} refused {value!r} before any handler ran: {error}")


def test_an_out_of_range_size_reaching_generate_is_refused_naming_the_field():
    from ui.request_builder import request_from_ui

    values = {"prompt": "x", "sampler_name": "Euler", "cfg_scale": 7, "steps": 3, "width": 99999,
              "height": 64, "batch_size": 1, "n_iter": 1, "seed": 1}
    with pytest.raises(RequestError, match="width must be between"):
        request_from_ui(values)
    with pytest.raises(RequestError, match="steps is empty"):
        request_from_ui({**values, "width": 64, "steps": None})
