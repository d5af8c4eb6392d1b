"""One way to check a value from a user: the rules every input shares (a request's fields, an
extension's or script's fields, settings, ControlNet units, Extras), each turning a bad value
into the same words in a RequestError that names the field.

A rule checks one value and returns it in its proper type:

    Whole(1, 150).check(steps, "steps")                   -> int, or "steps must be between 1 and 150, got 200"
    Number(0, 2).check(weight, "ControlNet unit 0: weight", "weight")
    OneOf(("Euler", "DDIM")).check(name, "Setting sampler", "sampler")

`label` is what the message calls the value (a field name, "Setting x", "Tiling: Strength");
`field` is what the error names for the caller (the API's field), the label when not given.
`lenient` rules take the forms client programs and config files send: "5" or 5.0 for a whole
number, "true"/"false" for a flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from engine.errors import RequestError

MAX_SHOWN = 100  # characters of a bad value echoed in a message


def shown(value: Any) -> str:
    """A value for an error message, cut short: echoing a huge one back would be a problem itself."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def _fail(message: str, field: str) -> RequestError:
    return RequestError(message, field)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {_number(low)} and {_number(high)}"
    return f"at least {_number(low)}" if low is not None else f"at most {_number(high)}"


@dataclass(frozen=True)
class Whole:
    """A whole number in [low, high] (None: unbounded), a multiple of `step` when given."""

    low: int | None = None
    high: int | None = None
    step: int | None = None
    lenient: bool = False

    def check(self, value: Any, label: str, field: str | None = None) -> int:
        field = field or label
        if self.lenient and not isinstance(value, bool):
            try:
                if isinstance(value, str):
                    value = float(value.strip())
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
            except (TypeError, ValueError, OverflowError):
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(f"{label} must be a whole number, got {shown(value)}", field)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise _fail(f"{label} must be {_bounds(self.low, self.high)}, got {value}", field)
        if self.step and value % self.step:
            below = value - value % self.step
            raise _fail(f"{label} must be a multiple of {self.step}, got {value} "
                        f"(nearest: {below} or {below + self.step})", field)
        return value


@dataclass(frozen=True)
class Number:
    """A finite number in [low, high] (None: unbounded)."""

    low: float | None = None
    high: float | None = None
    lenient: bool = False

    def check(self, value: Any, label: str, field: str | None = None) -> float:
        field = field or label
        if self.lenient and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(f"{label} must be a number, got {shown(value)}", field)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise _fail(f"{label} must be {_bounds(self.low, self.high)}, got {value:g}", field)
        return value


@dataclass(frozen=True)
class Flag:
    """True or false."""

    lenient: bool = False

    def check(self, value: Any, label: str, field: str | None = None) -> bool:
        if self.lenient and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise _fail(f"{label} must be true or false, got {shown(value)}", field or label)
        return value


@dataclass(frozen=True)
class Text:
    """A string of at most `max_chars` characters."""

    max_chars: int | None = None

    def check(self, value: Any, label: str, field: str | None = None) -> str:
        field = field or label
        if not isinstance(value, str):
            raise _fail(f"{label} must be text, got {shown(value)}", field)
        if self.max_chars is not None and len(value) > self.max_chars:
            raise _fail(f"{label} is too long: {len(value)} characters (at most {self.max_chars})", field)
        return value


@dataclass(frozen=True)
class OneOf:
    """One of `choices` (compared as given)."""

    choices: Sequence[Any]

    def check(self, value: Any, label: str, field: str | None = None) -> Any:
        if value not in self.choices:
            raise _fail(f"{label} must be one of {list(self.choices)}, got {shown(value)}", field or label)
        return value


@dataclass(frozen=True)
class Names:
    """A list of strings, each one of `choices` when given, at most `max_items` of at most
    `max_chars` characters."""

    choices: Sequence[str] = ()
    max_items: int | None = None
    max_chars: int | None = None
    comma_text: bool = False  # lenient: "a, b" means ["a", "b"]

    def check(self, value: Any, label: str, field: str | None = None) -> list[str]:
        field = field or label
        if self.comma_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                not all(isinstance(item, str) for item in value):
            raise _fail(f"{label} must be a list of names, got {shown(value)}", field)
        if self.max_items is not None and len(value) > self.max_items:
            raise _fail(f"{label} is too long: {len(value)} entries (at most {self.max_items})", field)
        if self.max_chars is not None and any(len(item) > self.max_chars for item in value):
            raise _fail(f"{label}: each entry must be at most {self.max_chars} characters", field)
        unknown = [item for item in value if self.choices and item not in self.choices]
        if unknown:
            raise _fail(f"{label}: unknown {shown(unknown[0])}; choose from {list(self.choices)}", field)
        return list(value)


@dataclass(frozen=True)
class NameMap:
    """An object of names to values, each value one of `choices` when given (a setting kept per
    checkpoint, say), at most `max_items` entries of at most `max_chars` characters."""

    choices: Sequence[str] = ()
    max_items: int | None = None
    max_chars: int | None = None

    def check(self, value: Any, label: str, field: str | None = None) -> dict[str, str]:
        field = field or label
        if not isinstance(value, dict) or not all(isinstance(key, str) and isinstance(item, str)
                                                  for key, item in value.items()):
            raise _fail(f"{label} must be an object of names to text, got {shown(value)}", field)
        if self.max_items is not None and len(value) > self.max_items:
            raise _fail(f"{label} is too long: {len(value)} entries (at most {self.max_items})", field)
        if self.max_chars is not None and any(len(key) > self.max_chars or len(item) > self.max_chars
                                              for key, item in value.items()):
            raise _fail(f"{label}: each name and value must be at most {self.max_chars} characters", field)
        for key, item in value.items():
            if self.choices and item not in self.choices:
                raise _fail(f"{label}: {shown(key)} has unknown value {shown(item)}; choose from "
                            f"{list(self.choices)}", field)
        return dict(value)


Rule = Whole | Number | Flag | Text | OneOf | Names | NameMap


def json_schema(rule: Rule) -> dict[str, Any]:
    """What a rule allows, as JSON-schema keywords (for the API's documentation)."""
    if isinstance(rule, (Whole, Number)):
        limits = {"minimum": rule.low, "maximum": rule.high}
        if isinstance(rule, Whole) and rule.step:
            limits["multipleOf"] = rule.step
        return {key: value for key, value in limits.items() if value is not None}
    if isinstance(rule, Text) and rule.max_chars is not None:
        return {"maxLength": rule.max_chars}
    if isinstance(rule, OneOf):
        return {"enum": list(rule.choices)}
    if isinstance(rule, Names) and rule.max_items is not None:
        return {"maxItems": rule.max_items}
    if isinstance(rule, NameMap) and rule.choices:
        return {"additionalProperties": {"enum": list(rule.choices)}}
    return {}
