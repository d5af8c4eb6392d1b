"""Sliders and number boxes that pass on what the box holds, in range or not.

Gradio checks a Slider's or Number's value against its minimum and maximum on the server, before
any handler runs, and answers an out-of-range value with an error (HTTP 500 for the events that
skip the queue). While the user types "2048" into a slider's box, the box holds 2, 20 and 204
first, and each keystroke fires the helpers that follow it (token counter, size summaries); the
browser clamps the value only when the box loses focus. So the range is not checked here:
helpers take what they get, and a job's values are checked where every entry point checks them,
on the request (GenerationRequest, ControlUnit, ExtrasRequest, Settings), whose message names
the field.
"""

from __future__ import annotations

import math

import gradio as gr


def typed_number(payload, precision: int | None) -> float | int | None:
    """The box's value as a number, rounded to `precision`; None when it holds none (an empty
    box, or something that is not a finite number)."""
    if isinstance(payload, str):
        try:
            payload = float(payload)
        except ValueError:
            return None
    if isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload):
        return None
    return gr.Number.round_to_precision(payload, precision)


class Slider(gr.Slider):
    """gr.Slider whose value reaches the handlers unchecked against its range."""

    is_template = True  # drawn by gr.Slider's own front end

    def preprocess(self, payload):
        return typed_number(payload, self.precision)


class Number(gr.Number):
    """gr.Number whose value reaches the handlers unchecked against its range."""

    is_template = True

    def preprocess(self, payload):
        return typed_number(payload, self.precision)
