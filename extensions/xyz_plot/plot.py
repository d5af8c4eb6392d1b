"""Reading a plot's options into three axes of values, running its cells through the host, and
putting the pictures together as A1111 does: a grid per Z value (X across, Y down), those grids
side by side under their Z labels, and the grid's infotext with the plot's keys."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from PIL import Image

from engine.errors import NotFoundError, RequestError
from engine.request import MAX_SEED

from .axes import Axis, CellJob, find_axis
from .values import expand, join_list, split_list

if TYPE_CHECKING:
    from engine.extensions.script import Catalog, ScriptHost
    from engine.job_results import GenerationResult
    from engine.request import GenerationRequest

TITLE = "X/Y/Z plot"
AXIS_NAMES = ("X", "Y", "Z")
SEED_AXES = ("Seed", "Var. seed")
# A1111's cap on a plot's size (its img_max_size_mp setting's default): cells x width x height.
MAX_GRID_MEGAPIXELS = 200


@dataclass(frozen=True)
class PlotAxis:
    name: str                # "X", "Y" or "Z"
    axis: Axis
    values: tuple[Any, ...]
    text: str                # the values as the infotext records them ("X Values")

    @property
    def label(self) -> str:
        return self.axis.label

    @property
    def active(self) -> bool:
        return self.axis.kind != "nothing"

    def legends(self) -> list[str]:
        return [self.axis.legend_text(value) for value in self.values]


@dataclass(frozen=True)
class Plot:
    axes: tuple[PlotAxis, PlotAxis, PlotAxis]
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    margin: int = 0

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(len(axis.values) for axis in self.axes)  # type: ignore[return-value]

    @property
    def cell_count(self) -> int:
        nx, ny, nz = self.counts
        return nx * ny * nz


def _in_context(which: str, axis_label: str, work: Callable[[], Any]) -> Any:
    """Run `work`; a refusal from it names the plot, the axis and its type."""
    try:
        return work()
    except (RequestError, NotFoundError) as error:
        if type(error) not in (RequestError, NotFoundError):
            raise
        raise type(error)(f"{TITLE}, {which} axis ({axis_label}): {error.message}", "script_args") from None


def read_axis(which: str, mode: str, options: Mapping[str, Any], request: "GenerationRequest",
              catalog: "Catalog", validate: bool = True) -> PlotAxis:
    """One axis's values from the options, expanded and checked before any cell runs. Without
    `validate` (the UI's estimate, whose request holds only the sizes) the values are not tried on
    the job and nothing that needs its prompt is checked."""
    key = which.lower()
    axis = find_axis(mode, options[f"{key}_type"], which)
    if not axis.supported:
        raise RequestError(f"{TITLE}: the {which} axis '{axis.label}' is not available here: this app has no "
                           f"{axis.missing} yet", "script_args")
    if axis.kind == "nothing":
        return PlotAxis(which, axis, (None,), "")
    dropdown = list(options.get(f"{key}_values_dropdown") or [])
    text = options.get(f"{key}_values") or ""
    if axis.choices is not None and not options.get("csv_mode") and dropdown:
        items, text = dropdown, join_list(dropdown)
    else:
        items = _in_context(which, axis.label, lambda: split_list(text))

    def checked() -> list[Any]:
        values = expand(axis.kind, items)
        if not values:
            raise RequestError("no values: give at least one", "script_args")
        if axis.bounds is not None:
            low, high = axis.bounds
            for value in values:
                if not low <= value <= high:
                    raise RequestError(f"{value} is out of range ({low:g} to {high:g})", "script_args")
        if axis.confirm is not None and (validate or not axis.reads_prompt):
            values = axis.confirm(values, request, catalog)
        if validate:
            for value in values:  # each value alone on the job: refused now rather than mid-plot
                cell = CellJob(request)
                axis.apply(cell, value, values)
                _validate_value(cell.request, value)
        return values

    values = _in_context(which, axis.label, checked)
    return PlotAxis(which, axis, tuple(values), text)


def _validate_value(request: "GenerationRequest", value: Any) -> None:
    try:
        request.validate()
    except (RequestError, NotFoundError) as error:
        raise type(error)(f"value {value!r}: {error.message}", "script_args") from None


def read_plot(request: "GenerationRequest", options: Mapping[str, Any], mode: str, catalog: "Catalog",
              validate: bool = True) -> Plot:
    axes = tuple(read_axis(name, mode, options, request, catalog, validate) for name in AXIS_NAMES)
    plot = Plot(axes, draw_legend=bool(options.get("draw_legend", True)),
                include_lone_images=bool(options.get("include_lone_images")),
                include_sub_grids=bool(options.get("include_sub_grids")),
                no_fixed_seeds=bool(options.get("no_fixed_seeds")),
                vary_seeds=tuple(bool(options.get(f"vary_seeds_{name.lower()}")) for name in AXIS_NAMES),
                margin=int(options.get("margin_size") or 0))
    megapixels = round(plot.cell_count * request.width * request.height / 1_000_000)
    if megapixels >= MAX_GRID_MEGAPIXELS:
        raise RequestError(f"{TITLE}: the grid would be too large ({plot.cell_count} cells, {megapixels} megapixels; "
                           f"at most {MAX_GRID_MEGAPIXELS})", "script_args")
    return plot


def random_seed() -> int:
    return random.randrange(4294967294)


def with_fixed_seeds(plot: Plot, request: "GenerationRequest") -> tuple[Plot, "GenerationRequest"]:
    """Unless seeds stay -1: the job's seed and variation seed fixed once (every cell shares
    them), and each -1 on a Seed or Var. seed axis made a random seed."""
    if plot.no_fixed_seeds:
        return plot, request
    request = request.replace(seed=random_seed() if request.seed == -1 else request.seed,
                              subseed=random_seed() if request.subseed == -1 else request.subseed)
    axes = tuple(replace(axis, values=tuple(random_seed() if value == -1 else value for value in axis.values))
                 if axis.axis.seeds else axis for axis in plot.axes)
    return replace(plot, axes=axes), request


def loop_order(costs: Sequence[float]) -> tuple[int, int, int]:
    """Which axis (0 X, 1 Y, 2 Z) is the outer, middle and inner loop. As A1111: an axis costlier
    than both others goes outermost, the costlier of the other two next; otherwise Z, Y, X."""
    for first in range(3):
        others = [index for index in range(3) if index != first]
        if all(costs[first] > costs[other] for other in others):
            a, b = others
            second = a if costs[a] > costs[b] else b
            return first, second, 3 - first - second
    return 2, 1, 0


def cells_in_order(plot: Plot) -> Iterator[tuple[int, int, int]]:
    """(ix, iy, iz) of every cell in the order they run."""
    counts = plot.counts
    outer, middle, inner = loop_order([axis.axis.cost for axis in plot.axes])
    for a in range(counts[outer]):
        for b in range(counts[middle]):
            for c in range(counts[inner]):
                index = [0, 0, 0]
                index[outer], index[middle], index[inner] = a, b, c
                yield tuple(index)  # type: ignore[misc]


def grid_index(plot: Plot, cell: tuple[int, int, int]) -> int:
    nx, ny, _ = plot.counts
    ix, iy, iz = cell
    return ix + iy * nx + iz * nx * ny


def cell_job(plot: Plot, request: "GenerationRequest", cell: tuple[int, int, int]) -> CellJob:
    """The job of one cell: each axis's value applied in X, Y, Z order, then the seed varied."""
    job = CellJob(request)
    for plot_axis, index in zip(plot.axes, cell):
        if plot_axis.active:
            plot_axis.axis.apply(job, plot_axis.values[index], plot_axis.values)
    if any(plot.vary_seeds) and job.request.seed != -1:
        nx, ny, _ = plot.counts
        xdim = nx if plot.vary_seeds[0] else 1
        ydim = ny if plot.vary_seeds[1] else 1
        offset = sum(step * index for step, index, vary in
                     zip((1, xdim, xdim * ydim), cell, plot.vary_seeds) if vary)
        job.change(seed=(job.request.seed + offset) % (MAX_SEED + 1))
    return job


# Infotext ---------------------------------------------------------------------------------------

def _quoted(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


_VERSION = re.compile(r"(?:^|, )Version: [^,]*$")


def with_params(infotext: str, params: Mapping[str, Any]) -> str:
    """The infotext with `params` added to its parameter line (before Version, as A1111 orders)."""
    extra = ", ".join(f"{key}: {_quoted(value)}" for key, value in params.items())
    if not extra:
        return infotext
    head, newline, last = infotext.rpartition("\n")
    version = _VERSION.search(last)
    if version is not None:
        before, after = last[:version.start()], last[version.start():].lstrip(", ")
        last = f"{before}, {extra}, {after}" if before else f"{extra}, {after}"
    else:
        last = f"{last}, {extra}" if last else extra
    return f"{head}{newline}{last}"


def plot_params(plot: Plot, axes: Sequence[str]) -> dict[str, str]:
    """The keys A1111 writes into a plot's grids: Script, then each named active axis's type, values
    as given and, for seed axes with fixed seeds, the seeds used."""
    params = {"Script": TITLE}
    for plot_axis in plot.axes:
        if plot_axis.name not in axes or not plot_axis.active:
            continue
        params[f"{plot_axis.name} Type"] = plot_axis.label
        params[f"{plot_axis.name} Values"] = plot_axis.text
        if plot_axis.label in SEED_AXES and not plot.no_fixed_seeds:
            params[f"Fixed {plot_axis.name} Values"] = ", ".join(str(value) for value in plot_axis.values)
    return params


# Running ----------------------------------------------------------------------------------------

def run_plot(plot: Plot, request: "GenerationRequest", host: "ScriptHost") -> "GenerationResult":
    plot, request = with_fixed_seeds(plot, request)
    total = plot.cell_count
    made: dict[int, "GenerationResult"] = {}
    results: list["GenerationResult"] = []
    host.plan(total)
    for number, cell in enumerate(cells_in_order(plot), start=1):
        if results and host.interrupted:
            break
        host.note(f"{TITLE}: cell {number} of {total}")
        job = cell_job(plot, request, cell)
        result = host.process(job.request, settings=job.settings, checkpoint=job.checkpoint)
        results.append(result)
        if result.images:
            made[grid_index(plot, cell)] = result
    return assemble(plot, request, host, results, made)


def assemble(plot: Plot, request: "GenerationRequest", host: "ScriptHost", results: list["GenerationResult"],
             made: dict[int, "GenerationResult"]) -> "GenerationResult":
    nx, ny, nz = plot.counts
    blank_size = next(iter(made.values())).images[0].size if made else (request.width, request.height)
    cells = [made[index].images[0] if index in made else Image.new("RGB", blank_size)
             for index in range(plot.cell_count)]
    x_axis, y_axis, z_axis = plot.axes
    legend = plot.draw_legend
    sub_grids = []
    for iz in range(nz):
        chunk = cells[iz * nx * ny:(iz + 1) * nx * ny]
        sub_grids.append(host.labelled_grid(chunk, ny, x_axis.legends() if legend else [],
                                            y_axis.legends() if legend else [], plot.margin))
    grid = host.labelled_grid(sub_grids, 1, z_axis.legends() if legend else [], [])

    first = made.get(0) or (next(iter(made.values())) if made else results[0])
    first_text = first.infotexts[0] if first.infotexts else ""
    grid_text = with_params(first_text, plot_params(plot, AXIS_NAMES))

    images: list[Image.Image] = []
    texts: list[str] = []
    seeds: list[tuple[int, int]] = []
    paths: list[Any] = []
    if plot.include_sub_grids and nz > 1:
        for iz, sub in enumerate(sub_grids):
            source = made.get(iz * nx * ny, first)
            text = with_params(source.infotexts[0] if source.infotexts else first_text, plot_params(plot, ("X", "Y")))
            images.append(sub)
            texts.append(text)
            seeds.append(_seeds_of(source))
            # Saved as the grid settings say (the engine saves the big one).
            paths.append(host.save_grid(sub, request, text))
    if plot.include_lone_images:
        for index in sorted(made):
            cell = made[index]
            images.append(cell.images[0])
            texts.append(cell.infotexts[0] if cell.infotexts else "")
            seeds.append(_seeds_of(cell))
            paths.append(cell.paths[0] if cell.paths else None)
    seeds = seeds or [_seeds_of(first)]
    return host.result(request, results, images=images, infotexts=texts, grid=grid, grid_infotext=grid_text,
                       seeds=[seed for seed, _ in seeds], subseeds=[subseed for _, subseed in seeds],
                       paths=paths)


def _seeds_of(result: "GenerationResult") -> tuple[int, int]:
    seed = result.seeds[0] if result.seeds else result.request.seed
    subseed = result.subseeds[0] if result.subseeds else result.request.subseed
    return seed, subseed


def estimate(plot: Plot, request: "GenerationRequest") -> str:
    nx, ny, nz = plot.counts
    per_cell = request.batch_size * request.n_iter
    images = plot.cell_count * per_cell
    return f"{images} image{'s' if images != 1 else ''} ({nx}×{ny}×{nz} cells × {per_cell}), + grid"
