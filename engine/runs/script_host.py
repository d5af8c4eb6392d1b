"""The host a script runs in: the services of engine.extensions.script.ScriptHost, on one job of
the GPU lane. The engine builds one per scripted job and hands the script only this."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

from PIL import Image

from engine.errors import RequestError
from engine.job_results import GenerationResult
from engine.jobs import Job
from engine.output import infotext as infotext_format
from engine.output.filenames import ImageFields
from engine.output.grids import labelled_grid
from engine.output.writer import OutputWriter, make_grid
from engine.request import LATENT_UPSCALE_MODES, GenerationRequest
from engine.sampling import samplers

log = logging.getLogger("engine.scripts")


class InstalledNames:
    """The Catalog extensions and scripts see: the names of what is installed, read afresh on
    each call, and checks that name a missing one."""

    def __init__(self, addons, registry, upscaler_names: Callable[[], Sequence[str]],
                 face_restorers: Sequence[str], check_upscaler: Callable[[str, str], str],
                 check_face_restorer: Callable[[str], None]):
        self._addons, self._registry = addons, registry
        self._upscaler_names, self._face_restorers = upscaler_names, tuple(face_restorers)
        self._check_upscaler, self._check_face_restorer = check_upscaler, check_face_restorer

    def check_upscaler(self, name: str, field: str = "script_args") -> str:
        """The upscaler's listed name (a standard model's file name selects it too); refuses an
        unknown one, and a standard one not downloaded yet (offering it), naming `field`."""
        return self._check_upscaler(name, field)

    def check_face_restorer(self, name: str) -> None:
        """Refuses a face restorer that cannot run here (missing weights are offered)."""
        self._check_face_restorer(name)

    def checkpoint_titles(self) -> list[str]:
        return sorted(self._registry.titles(), key=str.casefold)

    def find_checkpoint(self, name: str) -> str:
        return self._registry.find(name).title

    def vae_names(self) -> list[str]:
        return list(self._addons.vaes.choices())

    def style_names(self) -> list[str]:
        return list(self._addons.styles.names())

    def sampler_names(self) -> list[str]:
        return samplers.sampler_names()

    def schedule_types(self) -> list[str]:
        return list(samplers.SCHEDULE_TYPES)

    def upscaler_names(self) -> list[str]:
        return list(self._upscaler_names())

    def latent_upscale_modes(self) -> list[str]:
        return list(LATENT_UPSCALE_MODES)

    def face_restorers(self) -> list[str]:
        return list(self._face_restorers)


class JobScriptHost:
    """One scripted job's services. `run_job(request, settings, save)` runs one ordinary job on
    this lane (the engine's own path); `use_checkpoint(name)` makes that checkpoint current."""

    def __init__(self, job: Job, mode: str, catalog: InstalledNames, writer: OutputWriter,
                 run_job: Callable[[GenerationRequest, Mapping[str, Any], bool], GenerationResult],
                 use_checkpoint: Callable[[str], None], settings: Callable[[str], Any],
                 upscale: Callable[[Image.Image, str, int, int], Image.Image],
                 interrogate: Callable[[Image.Image], str], device: Callable[[], Any],
               model_info: Callable[[], Any]):
        self.job, self.mode, self.catalog, self.log = job, mode, catalog, log
        self._model_info = model_info
        self._writer, self._run_job, self._use_checkpoint = writer, run_job, use_checkpoint
        self._setting, self._upscale, self._interrogate, self._device = settings, upscale, interrogate, device
        self._planned = 0

    @property
    def device(self):
        return self._device()

    @property
    def interrupted(self) -> bool:
        return self.job.interrupted

    @property
    def checkpoint(self) -> str | None:
        info = self._model_info()
        return info.title if info is not None else None

    def plan(self, jobs: int) -> None:
        self._planned = max(1, int(jobs))
        self.job.plan_parts(self._planned)

    def note(self, text: str) -> None:
        self.job.textinfo = text

    def process(self, request: GenerationRequest, *, settings: Mapping[str, Any] | None = None,
                checkpoint: str | None = None, save: bool = True) -> GenerationResult:
        if checkpoint:
            self._use_checkpoint(checkpoint)
        self.job.next_part()
        self.job.skipped = False  # Skip stops the part running now, not the ones after it
        return self._run_job(request, dict(settings or {}), save)

    def grid(self, images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
        if rows is None:
            return make_grid(list(images))
        return labelled_grid(list(images), rows, [], [])

    def labelled_grid(self, images: Sequence[Image.Image], rows: int, column_labels: Sequence[Any],
                      row_labels: Sequence[Any], margin: int = 0) -> Image.Image:
        return labelled_grid(list(images), rows, list(column_labels), list(row_labels), margin)

    def save_grid(self, grid: Image.Image, request: GenerationRequest, infotext: str):
        if not (request.save_grid and self._setting("grid_save")):
            return None
        prompt, negative, _ = infotext_format.parse(infotext) if infotext else (request.prompt,
                                                                                 request.negative_prompt, {})
        fields = ImageFields.of(request, None, request.seed, grid, prompt, negative)
        return self._writer.save_grid_image(grid, self.mode, infotext, fields)

    def save_image(self, image: Image.Image, request: GenerationRequest, infotext: str):
        if not (request.save_images and self._setting("samples_save")):
            return None
        prompt, negative, _ = infotext_format.parse(infotext) if infotext else (request.prompt,
                                                                                 request.negative_prompt, {})
        fields = ImageFields.of(request, self._model_info(), request.seed, image, prompt, negative)
        return self._writer.save_image(image, self.mode, request.seed, infotext, fields)

    def result(self, request: GenerationRequest, results: Sequence[GenerationResult], *,
               images: Sequence[Image.Image] | None = None, infotexts: Sequence[str] | None = None,
               grid: Image.Image | None = None, grid_infotext: str | None = None,
               seeds: Sequence[int] | None = None, subseeds: Sequence[int] | None = None,
               paths: Sequence[Any] | None = None) -> GenerationResult:
        done = [r for r in results if r is not None]
        if not done:
            raise RequestError("The script made no pictures", "script_name")
        first = done[0]
        if images is None:
            images = [image for r in done for image in r.images]
            infotexts = [text for r in done for text in r.infotexts]
            seeds = [seed for r in done for seed in r.seeds]
            subseeds = [seed for r in done for seed in r.subseeds]
            paths = [path for r in done for path in (r.paths or [None] * len(r.images))]
        else:
            infotexts = list(infotexts or [first.infotexts[0] if first.infotexts else ""] * len(images))
            seeds = list(seeds or [])
            subseeds = list(subseeds) if subseeds is not None else [request.subseed] * len(seeds)
            paths = list(paths or [])
        warnings: list[str] = []
        for r in done:
            warnings += [note for note in r.warnings if note not in warnings]
        return dataclasses.replace(
            first, request=request, images=list(images), infotexts=list(infotexts), seeds=seeds,
            subseeds=subseeds, paths=paths, grid=grid, grid_path=None,
            grid_infotext=grid_infotext if grid is not None else None,
            interrupted=self.job.interrupted or any(r.interrupted for r in done), warnings=warnings)

    def upscale(self, image: Image.Image, upscaler: str, width: int, height: int) -> Image.Image:
        return self._upscale(image, upscaler, width, height)

    def interrogate(self, image: Image.Image) -> str:
        return self._interrogate(image)

    def setting(self, name: str) -> Any:
        return self._setting(name)


def square_rows(count: int) -> int:
    """Rows of a grid as square as the count allows (as make_grid lays it out)."""
    cols = math.ceil(math.sqrt(max(1, count)))
    return math.ceil(count / cols)


@contextlib.contextmanager
def checkpoint_kept(current: Callable[[], str | None], load: Callable[[str], Any]) -> Iterator[Callable[[str], None]]:
    """While a script runs it may switch checkpoints (an X/Y/Z axis); afterwards the checkpoint
    loaded before it is back. Yields the switch function (a no-op for the current one)."""
    before = current()

    def use(name: str) -> None:
        if name != current():
            load(name)

    try:
        yield use
    finally:
        if before is not None and current() != before:
            try:
                load(before)
            except Exception:  # the script's pictures are made: keep them
                log.exception("could not load %s back after a script", before)
