"""Scripts: the second kind of extension. A user picks at most one per job (the Script dropdown,
or the API's `script_name` + `script_args`); the script then runs the job its own way, usually by
asking the host to run ordinary jobs (as many as it likes, each changed as it likes) and
combining their pictures: X/Y/Z plot, prompt matrix, prompts from file, loopback, outpainting,
SD upscale.

A script sees only its own options and the `ScriptHost` it is given (engine/runs/script_host.py
implements it): run a job, plan the progress bar, make and save grids, upscale or describe a
picture, the names of what is installed, the device and a logger. Never the engine's internals.

Always-on extensions still act inside each job a script runs (hires fix, restore faces, ...).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from engine.errors import RequestError
from engine.extensions.fields import Field

if TYPE_CHECKING:
    from PIL import Image

# The hosting package stays below the generation machinery (see .importlinter), so these two are
# named, not imported: a GenerationRequest is engine.request's, a GenerationResult engine.job_results'.
GenerationRequest = GenerationResult = Any


class Catalog(Protocol):
    """The names of what is installed, as the UI lists them (each call reads them afresh)."""

    def checkpoint_titles(self) -> list[str]: ...
    def find_checkpoint(self, name: str) -> str: ...  # its title; RequestError naming the choices
    def vae_names(self) -> list[str]: ...
    def style_names(self) -> list[str]: ...
    def sampler_names(self) -> list[str]: ...
    def schedule_types(self) -> list[str]: ...
    def upscaler_names(self) -> list[str]: ...  # resampling ones first, then the model files
    def check_upscaler(self, name: str, field: str = "script_args") -> str: ...  # its listed name; refuses an unknown or missing one
    def check_face_restorer(self, name: str) -> None: ...  # refuses one that cannot run here
    def latent_upscale_modes(self) -> list[str]: ...
    def face_restorers(self) -> list[str]: ...


class ScriptHost(Protocol):
    """What a script may use while it runs (one job on the GPU lane)."""

    mode: str                     # "txt2img" or "img2img"
    catalog: Catalog
    log: logging.Logger

    @property
    def device(self) -> Any: ...  # the torch device pictures are made on

    @property
    def interrupted(self) -> bool: ...  # the user pressed Interrupt: stop starting jobs

    @property
    def checkpoint(self) -> str | None: ...  # the title of the checkpoint loaded now

    def plan(self, jobs: int) -> None:
        """How many `process` calls are coming, so progress and its estimate cover them all."""

    def note(self, text: str) -> None:
        """A line the progress display shows (e.g. "X/Y/Z plot: 3 of 12")."""

    def process(self, request: GenerationRequest, *, settings: Mapping[str, Any] | None = None,
                checkpoint: str | None = None, save: bool = True) -> GenerationResult:
        """Run `request` as an ordinary job (validated, completed from the settings, always-on
        extensions acting) and return its result. `settings`: settings for this job only (an
        X/Y/Z axis such as Clip skip). `checkpoint`: made by that checkpoint (loaded if needed;
        the one loaded before the script is back when the script ends). `save`: its images are
        saved as any job's are (False: kept only in the result)."""

    def grid(self, images: Sequence["Image.Image"], rows: int | None = None) -> "Image.Image":
        """The pictures in a grid of `rows` rows (None: as square as the count allows)."""

    def labelled_grid(self, images: Sequence["Image.Image"], rows: int, column_labels: Sequence[Any],
                      row_labels: Sequence[Any], margin: int = 0) -> "Image.Image":
        """A grid with a label above each column and left of each row (empty labels: no band).
        A label is a text, or a list of (text, on) pairs shown one per line, the "off" ones grey
        and struck through (the prompt matrix's parts)."""

    def save_grid(self, grid: "Image.Image", request: GenerationRequest, infotext: str) -> Any:
        """Save a grid the script made, as the grid settings say; its path or None."""

    def save_image(self, image: "Image.Image", request: GenerationRequest, infotext: str) -> Any:
        """Save a picture the script made (not one `process` saved already) as any job's
        pictures are saved; its path or None (saving off)."""

    def result(self, request: GenerationRequest, results: Sequence[GenerationResult], *,
               images: Sequence["Image.Image"] | None = None, infotexts: Sequence[str] | None = None,
               grid: "Image.Image | None" = None, grid_infotext: str | None = None,
               seeds: Sequence[int] | None = None, subseeds: Sequence[int] | None = None,
               paths: Sequence[Any] | None = None) -> GenerationResult:
        """What the script hands back: the pictures of `results` (or `images` with their
        `infotexts`, seeds and saved paths), with `grid` first when given; warnings and
        interruption carried over."""

    def upscale(self, image: "Image.Image", upscaler: str, width: int, height: int) -> "Image.Image":
        """`image` at width x height by the named upscaler (a resampling one or a model file)."""

    def interrogate(self, image: "Image.Image") -> str:
        """A caption of the picture (the Interrogate button's)."""

    def setting(self, name: str) -> Any:
        """The value of one setting (read only)."""


class Script:
    """Subclass and export an instance as `script` from the extension's module."""

    name: str = ""               # request.script.name once the job is checked, and a stable id
    title: str = ""              # what the Script dropdown shows; the API's script_name (any case)
    aliases: tuple[str, ...] = ()  # other script_name values accepted (the mature UI's older titles)
    order: int = 100             # place in the dropdown
    modes: tuple[str, ...] = ("txt2img", "img2img")
    fields: tuple[Field, ...] = ()  # in the order the API's script_args gives them
    description: str = ""        # shown under the fields; name what is missing here

    def attach(self, catalog: Catalog) -> None:
        """Called once at start with the names of what is installed (for field choices)."""

    def fields_for(self, mode: str) -> tuple[Field, ...]:
        """The fields this tab shows and script_args fills, in order."""
        return self.fields

    def options_from_args(self, args: Sequence[Any], mode: str) -> dict[str, Any]:
        """The API's positional script_args as this script's options: by default one value
        per field, in order; missing ones keep their defaults."""
        fields = self.fields_for(mode)
        if not isinstance(args, (list, tuple)):
            raise RequestError(f"script_args for {self.title} must be a list", "script_args")
        if len(args) > len(fields):
            raise RequestError(f"script_args for {self.title}: at most {len(fields)} values "
                               f"({', '.join(f.name for f in fields)}), got {len(args)}", "script_args")
        return {f.name: value for f, value in zip(fields, args) if value is not None}

    def check(self, request: GenerationRequest, options: Mapping[str, Any]) -> None:
        """Refuse options that cannot work for this request (raise RequestError) before the job
        is queued."""

    def estimate(self, request: GenerationRequest, options: Mapping[str, Any]) -> str | None:
        """A line the UI shows under the fields before starting (e.g. "12 images"), or None."""
        return None

    def run(self, request: GenerationRequest, options: Mapping[str, Any],
            host: ScriptHost) -> GenerationResult:
        raise NotImplementedError

    def matches(self, name: str) -> bool:
        wanted = name.strip().lower()
        return wanted in (self.name.lower(), self.title.lower(), *(a.lower() for a in self.aliases))


def checked_options(script: Script, mode: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A script's options with defaults filled in, each value checked against its field."""
    if not isinstance(values, Mapping):
        raise RequestError(f"{script.title}: options must be an object of field values", "script_args")
    fields = {f.name: f for f in script.fields_for(mode)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RequestError(f"{script.title}: unknown option {unknown[0]!r}. Options: "
                           f"{', '.join(fields) or 'none'}", "script_args")
    options = {name: field.default for name, field in fields.items()}
    for name, value in values.items():
        options[name] = fields[name].coerce(value, script.title, "script_args")
    return options
