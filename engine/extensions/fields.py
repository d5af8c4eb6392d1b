"""The fields an extension or a script declares: the UI draws each, the request carries its value,
and `coerce` checks a value from the UI or the API against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError

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

    def coerce(self, value: Any, owner: str, error_field: str = "extensions") -> Any:
        where = f"{owner}: {self.label}"
        if self.kind == "checkbox":
            if not isinstance(value, bool):
                raise RequestError(f"{where} must be true or false, got {value!r}", error_field)
            return value
        if self.kind in ("slider", "number"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise RequestError(f"{where} must be a number, got {value!r}", error_field)
            low = self.minimum if self.minimum is not None else float("-inf")
            high = self.maximum if self.maximum is not None else float("inf")
            if not low <= value <= high:
                raise RequestError(f"{where} must be between {low:g} and {high:g}, got {value}",
                                   error_field)
            return type(self.default)(value) if isinstance(self.default, int) and float(value).is_integer() else value
        if self.kind == "multiselect":
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                    not all(isinstance(item, str) for item in value):
                raise RequestError(f"{where} must be a list of names, got {value!r}", error_field)
            unknown = [item for item in value if self.choices and item not in self.choices]
            if unknown:
                raise RequestError(f"{where}: unknown {unknown[0]!r}; choose from {list(self.choices)}",
                                   error_field)
            return list(value)
        if self.kind in ("dropdown", "radio") and self.strict and self.choices and value not in self.choices:
            raise RequestError(f"{where} must be one of {list(self.choices)}, got {value!r}", error_field)
        if not isinstance(value, str):
            raise RequestError(f"{where} must be text, got {value!r}", error_field)
        return value
