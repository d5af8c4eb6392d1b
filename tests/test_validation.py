"""One validation system: the rules (engine/validation.py) and every kind of input checked with
them saying the same thing in the same words."""

import math

import pytest
from PIL import Image

from engine.controlnet.units import ControlUnit
from engine.errors import RequestError
from engine.extensions.fields import Field
from engine.request import GenerationRequest
from engine.option import Option
from engine.validation import Flag, Names, Number, OneOf, Text, Whole, json_schema, shown


def refused(rule, value, label="x"):
    with pytest.raises(RequestError) as caught:
        rule.check(value, label)
    return caught.value


@pytest.mark.parametrize("rule, good, expected", [
    (Whole(1, 10), 3, 3), (Whole(lenient=True), "7", 7), (Whole(lenient=True), 7.0, 7),
    (Number(0, 1), 0.5, 0.5), (Number(lenient=True), " 2.5 ", 2.5),
    (Flag(), True, True), (Flag(lenient=True), "False", False),
    (Text(5), "abc", "abc"), (OneOf(("a", "b")), "b", "b"),
    (Names(("a", "b")), ("a",), ["a"]), (Names(comma_text=True), "a, b", ["a", "b"]),
])
def test_a_good_value_comes_back_in_its_type(rule, good, expected):
    assert rule.check(good, "x") == expected and type(rule.check(good, "x")) is type(expected)


@pytest.mark.parametrize("rule, bad, words", [
    (Whole(1, 150), 200, "x must be between 1 and 150, got 200"),
    (Whole(1, 150), 2.5, "x must be a whole number, got 2.5"),
    (Whole(1, 150), True, "x must be a whole number, got True"),
    (Whole(-1, 2**32 - 1), 2**33, "x must be between -1 and 4294967295, got 8589934592"),
    (Whole(64, 2048, 8), 100, "x must be a multiple of 8, got 100 (nearest: 96 or 104)"),
    (Whole(low=1), 0, "x must be at least 1, got 0"),
    (Number(0, 1), 1.5, "x must be between 0 and 1, got 1.5"),
    (Number(0, 1), math.nan, "x must be a number, got nan"),
    (Number(0, 1), "0.5", "x must be a number, got '0.5'"),
    (Flag(), "yes", "x must be true or false, got 'yes'"),
    (Text(3), "abcd", "x is too long: 4 characters (at most 3)"),
    (Text(3), 4, "x must be text, got 4"),
    (OneOf(("a", "b")), "c", "x must be one of ['a', 'b'], got 'c'"),
    (Names(("a",)), ["b"], "x: unknown 'b'; choose from ['a']"),
    (Names(max_items=1), ["a", "b"], "x is too long: 2 entries (at most 1)"),
    (Names(), "a", "x must be a list of names, got 'a'"),
])
def test_a_bad_value_is_refused_in_the_same_words_everywhere(rule, bad, words):
    error = refused(rule, bad)
    assert error.message == words and error.field == "x"


def test_a_huge_bad_value_is_not_echoed_back_whole():
    error = refused(Whole(), "9" * 10_000 + "z")
    assert len(error.message) < 200 and shown("y" * 500).endswith("...")


def test_requests_fields_settings_and_controlnet_units_share_the_words():
    """The same problem (a number out of its range) reads the same from every kind of input."""
    def message(check):
        with pytest.raises(RequestError) as caught:
            check()
        return caught.value.message

    request = message(lambda: GenerationRequest(steps=500).validate())
    field = message(lambda: Field("steps", "Steps", 20, kind="slider", minimum=1, maximum=150).coerce(500, "Demo"))
    setting = message(lambda: Option("steps", 20, "Steps", "x", minimum=1, maximum=150).coerce(500))
    unit = message(lambda: ControlUnit(enabled=True, model="m", image=Image.new("RGB", (8, 8)),
                                       weight=5).validate(0))
    assert request == "steps must be between 1 and 150, got 500"
    assert field == "Demo: Steps must be between 1 and 150, got 500"
    assert setting == "Setting steps must be between 1 and 150, got 500"
    assert unit == "ControlNet unit 0: weight must be between 0 and 2, got 5"


def test_settings_take_numbers_and_flags_written_as_text():
    assert Option("n", 3, "N", "x", minimum=0, maximum=9).coerce("5") == 5
    assert Option("f", 0.5, "F", "x").coerce(1) == 1.0 and isinstance(Option("f", 0.5, "F", "x").coerce(1), float)
    assert Option("b", False, "B", "x").coerce("true") is True
    assert Option("l", ["a"], "L", "x").coerce("a, b") == ["a", "b"]
    with pytest.raises(RequestError, match="Setting n must be a whole number, got 5.5"):
        Option("n", 3, "N", "x").coerce("5.5")


def test_the_api_documents_the_engines_limits():
    from ui.api.models import Img2ImgBody, Txt2ImgBody

    steps = Txt2ImgBody.model_json_schema()["properties"]["steps"]
    assert (steps["minimum"], steps["maximum"]) == (1, 150)
    width = Img2ImgBody.model_json_schema()["properties"]["width"]
    assert (width["minimum"], width["maximum"]) == (64, 2048) and "multipleOf" not in width
    assert json_schema(Whole(64, 2048, 8)) == {"minimum": 64, "maximum": 2048, "multipleOf": 8}
    assert json_schema(OneOf(("a",))) == {"enum": ["a"]}
