"""Prompt matrix: the prompt is cut at each `|`; the first part is always used, and every
combination of the other parts (on or off) makes one picture, all from the same seed unless
"Random seeds" is ticked. The pictures come back after a grid whose column and row legends show
which parts each picture has (the parts it lacks are grey and struck through), as the mature UI
draws it: the first half of the optional parts across, the rest down.

API (script_name "Prompt matrix"): script_args = [put_at_start, different_seeds, prompt_type
("positive"/"negative"), variations_delimiter ("comma"/"space"), margin_size]."""

from __future__ import annotations

import random
from typing import Any, Mapping

from engine.errors import RequestError
from engine.extensions import Field, Script, ScriptHost

MAX_PICTURES = 1024  # 10 optional parts; more would queue thousands of jobs by mistake
SEED_RANGE = 2**32   # seeds wrap round rather than leave the valid range


def matrix_parts(prompt: str) -> list[str]:
    """The prompt cut at each `|`: the part always used, then the optional ones."""
    return prompt.split("|")


def matrix_prompts(prompt: str, put_at_start: bool = False, delimiter: str = "comma") -> list[str]:
    """One prompt per combination of the optional parts; combination `n` has optional part `i`
    when bit `i` of `n` is set. The first part is kept as written; each optional one loses the
    spaces and commas around it, and they are joined with ", " (comma) or " " (space) after the
    first part, or before it with put_at_start."""
    first, *optional = matrix_parts(prompt)
    joiner = ", " if delimiter == "comma" else " "
    prompts = []
    for number in range(2 ** len(optional)):
        chosen = [part.strip().strip(",") for bit, part in enumerate(optional) if number >> bit & 1]
        prompts.append(joiner.join(chosen + [first] if put_at_start else [first] + chosen))
    return prompts


def grid_layout(prompt: str) -> tuple[int, list, list]:
    """(rows, column legends, row legends) of the matrix grid. With k optional parts the grid has
    2^ceil(k/2) columns, one per combination of the first ceil(k/2) parts, and 2^floor(k/2)
    rows for the others; picture n (combination n) sits at row n // columns, column
    n % columns. A legend lists its parts as (text, on) pairs."""
    optional = [part.strip() for part in matrix_parts(prompt)[1:]]
    across_count = (len(optional) + 1) // 2
    across, down = optional[:across_count], optional[across_count:]

    def legends(parts: list[str]) -> list[list[tuple[str, bool]]]:
        return [[(part, bool(number >> bit & 1)) for bit, part in enumerate(parts)]
                for number in range(2 ** len(parts))]

    return 2 ** len(down), legends(across), legends(down)


class PromptMatrix(Script):
    name = "prompt_matrix"
    title = "Prompt matrix"
    order = 20
    modes = ("txt2img", "img2img")
    fields = (
        Field("put_at_start", "Set at prompt start", False,
              info="Put the optional parts before the first part instead of after it"),
        Field("different_seeds", "Random seeds", False,
              info="Each picture its own seed (seed + its number) instead of one seed for all"),
        Field("prompt_type", "Prompt type", "positive", kind="radio", choices=("positive", "negative"),
              info="Which prompt is cut at | into parts"),
        Field("variations_delimiter", "Joining char", "comma", kind="radio", choices=("comma", "space")),
        Field("margin_size", "Grid margins (px)", 0, kind="slider", minimum=0, maximum=500, step=2),
    )
    description = ("Separate the parts of the prompt with |, e.g. \"a house | at night | in snow\": "
                   "one picture for each combination of the parts after the first, then a grid "
                   "with the parts on (black) or off (struck through).")

    def _source(self, request, options: Mapping[str, Any]) -> str:
        return request.prompt if options["prompt_type"] == "positive" else request.negative_prompt

    def check(self, request, options) -> None:
        count = 2 ** (len(matrix_parts(self._source(request, options))) - 1)
        if count > MAX_PICTURES:
            raise RequestError(f"Prompt matrix: {count} combinations is too many (at most {MAX_PICTURES}, "
                               "that is 10 parts after the first): use fewer |", "script_args")

    def estimate(self, request, options) -> str | None:
        source = self._source(request, options)
        if "|" not in source:  # the UI asks without the prompt: nothing to say
            return None
        count = 2 ** (len(matrix_parts(source)) - 1)
        return f"{count} image{'s' if count != 1 else ''} and a grid"

    def run(self, request, options, host: ScriptHost):
        source = self._source(request, options)
        prompts = matrix_prompts(source, options["put_at_start"], options["variations_delimiter"])
        seed = request.seed if request.seed != -1 else random.randrange(SEED_RANGE - 1)
        subseed = request.subseed if request.subseed != -1 else random.randrange(SEED_RANGE - 1)
        host.plan(len(prompts))
        host.log.info("Prompt matrix: %d images", len(prompts))
        results = []
        for number, text in enumerate(prompts):
            host.note(f"Prompt matrix: {number + 1} of {len(prompts)}")
            job = request.replace(batch_size=1, n_iter=1, subseed=subseed, save_grid=False,
                                  seed=(seed + (number if options["different_seeds"] else 0)) % SEED_RANGE)
            job = job.replace(prompt=text) if options["prompt_type"] == "positive" else \
                job.replace(negative_prompt=text)
            results.append(host.process(job))
            if host.interrupted:
                break
        images = [image for result in results for image in result.images]
        grid = None
        if len(images) == len(prompts):  # an interrupted matrix has no grid to fill
            rows, across, down = grid_layout(source)
            grid = host.labelled_grid(images, rows, across, down, int(options["margin_size"]))
        return host.result(request, results, grid=grid)


script = PromptMatrix()
