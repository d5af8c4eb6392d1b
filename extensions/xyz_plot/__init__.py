"""X/Y/Z plot: the same job made over a grid of values of up to three parameters (steps across,
CFG scale down, a checkpoint per grid, ...), as A1111 1.10.1's script makes it, with its
script_args order and its axis indices.

axes.py holds the axis table, values.py the value syntax, plot.py running the cells and putting
the grids together; this module is the script the registry loads."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from engine.errors import RequestError, UserError
from engine.extensions import Field, Script

from .axes import describe_choices, find_axis, labels_for, missing_labels
from .plot import TITLE, estimate, read_plot, run_plot
from .values import join_list, split_list

# A1111 1.10.1's script_args, in order.
FIELD_NAMES = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown",
               "z_type", "z_values", "z_values_dropdown", "draw_legend", "include_lone_images",
               "include_sub_grids", "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z",
               "margin_size", "csv_mode")
# Before vary_seeds_x/y/z (A1111 up to 1.5): clients that still send 15 values.
OLD_FIELD_NAMES = FIELD_NAMES[:13] + ("margin_size", "csv_mode")
CHECKBOXES = ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
              "vary_seeds_y", "vary_seeds_z", "csv_mode")


def _fields(mode: str) -> tuple[Field, ...]:
    labels = labels_for(mode)
    axis_fields: list[Field] = []
    for name, default in (("x", "Seed"), ("y", "Nothing"), ("z", "Nothing")):
        upper = name.upper()
        axis_fields += [
            Field(f"{name}_type", f"{upper} type", default, kind="dropdown", choices=labels),
            Field(f"{name}_values", f"{upper} values", "", kind="text",
                  info="comma-separated; ranges 1-5, 1-10 (+2), 1-10 [5]; \"quote\" values with commas"),
            # Values picked from a list, for axes that have one (the API's; the UI types them).
            Field(f"{name}_values_dropdown", f"{upper} values (from the list)", [], kind="multiselect",
                  in_ui=False),
        ]
    return (*axis_fields,
            Field("draw_legend", "Draw legend", True),
            Field("include_lone_images", "Include Sub Images", False),
            Field("include_sub_grids", "Include Sub Grids", False),
            Field("no_fixed_seeds", "Keep -1 for seeds", False),
            Field("vary_seeds_x", "Vary seeds for X", False, info="seed + column index"),
            Field("vary_seeds_y", "Vary seeds for Y", False),
            Field("vary_seeds_z", "Vary seeds for Z", False),
            Field("margin_size", "Grid margins (px)", 0, kind="slider", minimum=0, maximum=500, step=2),
            Field("csv_mode", "Use text inputs instead of dropdowns", False, in_ui=False))


def _as_bool(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    return value


def _as_text(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return join_list(str(item) for item in value)
    return value


def _as_list(value: Any) -> Any:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return split_list(value)
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    return value


class XyzPlot(Script):
    name = "xyz_plot"
    title = TITLE
    aliases = ("xyz plot", "xyz_grid", "x/y/z grid")
    order = 10
    modes = ("txt2img", "img2img")
    description = (
        "Makes the job once per combination of up to three parameters' values and puts the pictures "
        "in a grid per Z value (X across, Y down), with the grids side by side. Values: comma-separated "
        "(quote values with commas), ranges 1-5, 1-10 (+2), 10-1 (-3), 1-10 [5] and their decimal "
        "forms; Prompt S/R replaces its first value with each value; Prompt order tries every order. "
        "Not available yet (refused): " + ", ".join(missing_labels()) + ".")
    catalog = None

    def __init__(self) -> None:
        self.fields = _fields("txt2img")
        self._fields = {mode: _fields(mode) for mode in self.modes}

    def attach(self, catalog) -> None:
        self.catalog = catalog

    def fields_for(self, mode: str) -> tuple[Field, ...]:
        return self._fields.get(mode, self.fields)

    def axis_choices(self, mode: str, axis: Any) -> list[str] | None:
        """The values an axis type offers as a list (what the values dropdown should show), or
        None where the values are typed."""
        if self.catalog is None:
            return None
        return describe_choices(find_axis(mode, axis), self.catalog)

    def options_from_args(self, args: Sequence[Any], mode: str) -> dict[str, Any]:
        """A1111's positional script_args: axis types as indices into the tab's axis list (labels
        are accepted too), values as text, the dropdown values as a list."""
        if not isinstance(args, (list, tuple)):
            raise RequestError(f"script_args for {self.title} must be a list", "script_args")
        names = FIELD_NAMES
        if len(args) == len(OLD_FIELD_NAMES) and isinstance(args[13], (int, float)) \
                and not isinstance(args[13], bool):
            names = OLD_FIELD_NAMES
        if len(args) > len(names):
            raise RequestError(f"script_args for {self.title}: at most {len(names)} values "
                               f"({', '.join(names)}), got {len(args)}", "script_args")
        options: dict[str, Any] = {}
        for name, value in zip(names, args):
            if value is None:
                continue
            if name.endswith("_type"):
                value = find_axis(mode, value, name[0].upper()).label
            elif name.endswith("_values_dropdown"):
                value = _as_list(value)
            elif name.endswith("_values"):
                value = _as_text(value)
            elif name in CHECKBOXES:
                value = _as_bool(value)
            options[name] = value
        return options

    def check(self, request, options: Mapping[str, Any]) -> None:
        read_plot(request, options, request.mode, self.catalog)

    def estimate(self, request, options: Mapping[str, Any]) -> str | None:
        try:
            return estimate(read_plot(request, options, request.mode, self.catalog, validate=False), request)
        except UserError as error:
            return error.message

    def run(self, request, options: Mapping[str, Any], host):
        plot = read_plot(request, options, host.mode, host.catalog)
        return run_plot(plot, request, host)


script = XyzPlot()
