"""The fields an extension or a script declares: the UI draws each, the request carries its value,
and `coerce` checks a value from the UI or the API against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.validation import Flag, Names, Number, OneOf, Rule, Text

# A text field's value and a list's entries: far beyond any real option (a prompts-from-file
# box holds many lines), a cap so no request makes the server hold more than that.
MAX_CHARS = 100_000
MAX_ITEMS = 1_000

FIELD_KINDS = ("checkbox", "slider", "number", "dropdown", "radio", "text", "multiselect")


@dataclass(frozen=True)
class Field:
    """One input an extension asks for; the UI draws it, the request carries its value."""

    name: str
    label: str
    default: Any
    kind: str = "checkbox"
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()
    in_ui: bool = True  # False: set elsewhere (a setting) but still accepted from the API
    lines: int = 1      # a text field's height in the UI (more: a multi-line box)
    info: str = ""      # a hint the UI shows with the field
    strict: bool = True  # False: the choices are what the UI offers; the owner checks the value itself

    def rule(self) -> Rule:
        """The validation rule of this field's values (engine/validation.py)."""
        if self.kind == "checkbox":
            return Flag()
        if self.kind in ("slider", "number"):
            return Number(self.minimum, self.maximum)
        if self.kind == "multiselect":
            return Names(self.choices, max_items=MAX_ITEMS, max_chars=MAX_CHARS)
        if self.kind in ("dropdown", "radio") and self.strict and self.choices:
            return OneOf(self.choices)
        return Text(MAX_CHARS)

    def coerce(self, value: Any, owner: str, error_field: str = "extensions") -> Any:
        """The value checked against this field ("<owner>: <label> must be ..." when it is not);
        a whole number for a field whose default is one."""
        value = self.rule().check(value, f"{owner}: {self.label}", error_field)
        if self.kind in ("slider", "number") and isinstance(self.default, int) and float(value).is_integer():
            return int(value)
        return value
