"""Prompts from file or textbox: one job per non-empty line of the list.

A plain line is a prompt, put before the tab's prompt or after it ("Insert prompts at the": start
or end; it is the whole prompt when the tab's prompt is empty). A line that starts with `--`
sets the job's options in the mature UI's syntax, read the way a shell reads words (quotes keep
spaces):

    --prompt "a red house" --negative_prompt "blurry" --steps 10 --seed 5 --sampler_name "Euler a"

--prompt and --negative_prompt take every word up to the next option. An option this app has no
field for, a value that is not a number where one is needed, or a quote left open refuses the
job at once, naming the line and the option.

API (script_name "Prompts from file or textbox"): script_args = [checkbox_iterate,
checkbox_iterate_batch, prompt_position ("start"/"end"), prompt_txt]; the older three-value form
[checkbox_iterate, checkbox_iterate_batch, prompt_txt] is accepted too."""

from __future__ import annotations

import random
import shlex
from typing import Any, Callable, Mapping, Sequence

from engine.errors import RequestError, UserError
from engine.extensions import Field, Script, ScriptHost

SEED_RANGE = 2**32
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _integer(text: str) -> int:
    return int(text)


def _number(text: str) -> float:
    return float(text)


def _switch(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _text(text: str) -> str:
    return text


# The options a line may give (the mature UI's names), each with how its value is read.
OPTIONS: dict[str, Callable[[str], Any]] = {
    "prompt": _text, "negative_prompt": _text, "styles": _text, "sd_model": _text,
    "seed": _integer, "subseed": _integer, "subseed_strength": _number,
    "seed_resize_from_h": _integer, "seed_resize_from_w": _integer,
    "sampler_name": _text, "sampler_index": _integer,
    "batch_size": _integer, "n_iter": _integer, "steps": _integer, "cfg_scale": _number,
    "width": _integer, "height": _integer, "denoising_strength": _number,
    "restore_faces": _switch, "tiling": _switch,
    "do_not_save_samples": _switch, "do_not_save_grid": _switch,
}
# The mature UI's options with nothing to set here, and why.
NOT_HERE = {
    "outpath_samples": "pictures are saved in the folders Settings > Saving names",
    "outpath_grids": "grids are saved in the folders Settings > Saving names",
    "prompt_for_display": "the prompt shown is the one used",
}
SENTENCE_OPTIONS = ("prompt", "negative_prompt")  # take every word up to the next option


def prompt_lines(text: str) -> list[tuple[int, str]]:
    """(line number from 1, line) of each line with something on it, stripped."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def line_options(line: str, number: int = 1) -> dict[str, Any]:
    """A line's options: {"prompt": line} for a plain line, the parsed options for one that
    starts with "--" (RequestError naming the line and what is wrong)."""
    if not line.startswith("--"):
        return {"prompt": line}
    where = f"Prompts from file, line {number}"
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise RequestError(f"{where}: {error} in {line!r}", "script_args") from None
    options: dict[str, Any] = {}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise RequestError(f"{where}: expected an option starting with --, got {word!r}", "script_args")
        name = word[2:]
        if name in NOT_HERE:
            raise RequestError(f"{where}: option {word} is not supported here ({NOT_HERE[name]})", "script_args")
        if name not in OPTIONS:
            raise RequestError(f"{where}: unknown option {word}. Options: "
                               f"{', '.join('--' + known for known in OPTIONS)}", "script_args")
        if position + 1 >= len(words):
            raise RequestError(f"{where}: option {word} needs a value", "script_args")
        if name in SENTENCE_OPTIONS:
            end = position + 1
            while end + 1 < len(words) and not words[end + 1].startswith("--"):
                end += 1
            options[name] = " ".join(words[position + 1:end + 1])
            position = end + 1
            continue
        try:
            options[name] = OPTIONS[name](words[position + 1])
        except ValueError as error:
            raise RequestError(f"{where}: option {word}: {error}", "script_args") from None
        position += 2
    return options


def _joined(line_text: str, tab_text: str, position: str) -> str:
    if not (line_text and tab_text):
        return line_text
    return f"{line_text} {tab_text}" if position == "start" else f"{tab_text} {line_text}"


def _with_extension(request, name: str, enabled: bool):
    extensions = {key: dict(values) for key, values in request.extensions.items()}
    extensions[name] = {**extensions.get(name, {}), "enabled": enabled}
    return request.replace(extensions=extensions)


def line_request(request, options: Mapping[str, Any], position: str, sampler_names: Sequence[str]):
    """The tab's request with one line's options applied; the line's prompts go before or after
    the tab's (`position` "start" or "end"), or replace them when the tab's are empty."""
    changes: dict[str, Any] = {}
    for name, value in options.items():
        if name == "prompt":
            changes["prompt"] = _joined(value, request.prompt, position)
        elif name == "negative_prompt":
            changes["negative_prompt"] = _joined(value, request.negative_prompt, position)
        elif name == "styles":
            changes["styles"] = tuple(style.strip() for style in value.split(",") if style.strip())
        elif name == "sampler_index":
            if not 0 <= value < len(sampler_names):
                raise RequestError(f"--sampler_index {value} is not a sampler's number (0 to "
                                   f"{len(sampler_names) - 1}: {', '.join(sampler_names)})", "script_args")
            changes["sampler_name"] = sampler_names[value]
        elif name == "do_not_save_samples":
            changes["save_images"] = not value
        elif name == "do_not_save_grid":
            changes["save_grid"] = not value
        elif name in ("restore_faces", "tiling", "sd_model"):
            continue  # below, and the checkpoint by the caller
        else:
            changes[name] = value
    request = request.replace(**changes)
    for name in ("restore_faces", "tiling"):
        if name in options:
            request = _with_extension(request, name, options[name])
    return request


class PromptsFromFile(Script):
    name = "prompts_from_file"
    title = "Prompts from file or textbox"
    aliases = ("Prompts from file",)
    order = 30
    modes = ("txt2img", "img2img")
    fields = (
        Field("checkbox_iterate", "Iterate seed every line", False,
              info="Each line starts where the previous line's seeds ended"),
        Field("checkbox_iterate_batch", "Use same random seed for all lines", False,
              info="With seed -1: one random seed, drawn once, for every line"),
        Field("prompt_position", "Insert prompts at the", "start", kind="radio", choices=("start", "end")),
        Field("prompt_txt", "List of prompt inputs", "", kind="text", lines=7,
              info="One job per line; paste a file's text here. A line may set options: "
                   "--prompt \"...\" --negative_prompt \"...\" --steps 10 --seed 5 ..."),
    )
    description = ("One job per line of the list. A line starting with -- sets that job's options "
                   "(--prompt, --negative_prompt, --seed, --steps, --sampler_name, --cfg_scale, "
                   "--width, --height, --batch_size, --n_iter, --styles, --sd_model, ...).")

    catalog = None

    def attach(self, catalog) -> None:
        self.catalog = catalog

    def options_from_args(self, args: Sequence[Any], mode: str) -> dict[str, Any]:
        # Before "Insert prompts at the" existed the list was the third value.
        if isinstance(args, (list, tuple)) and len(args) == 3 and args[2] not in ("start", "end", None):
            args = [args[0], args[1], None, args[2]]
        return super().options_from_args(args, mode)

    def _sampler_names(self) -> list[str]:
        return self.catalog.sampler_names() if self.catalog is not None else []

    def _jobs(self, request, options) -> list[tuple[int, dict[str, Any]]]:
        jobs = [(number, line_options(line, number)) for number, line in prompt_lines(options["prompt_txt"])]
        if not jobs:
            raise RequestError("Prompts from file: the list of prompts is empty (one prompt per line)",
                               "script_args")
        return jobs

    def check(self, request, options) -> None:
        for number, line in self._jobs(request, options):
            try:
                line_request(request, line, options["prompt_position"], self._sampler_names()).validate()
                if "sd_model" in line and self.catalog is not None:
                    self.catalog.find_checkpoint(line["sd_model"])
            except UserError as error:
                message = error.message
                if not message.startswith("Prompts from file"):
                    message = f"Prompts from file, line {number}: {message}"
                raise RequestError(message, "script_args") from None

    def estimate(self, request, options) -> str | None:
        try:
            jobs = self._jobs(request, options)
        except RequestError:
            return None
        images = sum(line.get("n_iter", request.n_iter) * line.get("batch_size", request.batch_size)
                     for _, line in jobs)
        return f"{len(jobs)} line{'s' if len(jobs) != 1 else ''}, {images} image{'s' if images != 1 else ''}"

    def run(self, request, options, host: ScriptHost):
        jobs = self._jobs(request, options)
        seed = request.seed
        if (options["checkbox_iterate"] or options["checkbox_iterate_batch"]) and seed == -1:
            seed = random.randrange(SEED_RANGE - 1)
        # A line's --sd_model is for that line: the next one without it uses the tab's checkpoint.
        start_checkpoint = host.checkpoint if any("sd_model" in line for _, line in jobs) else None
        host.plan(len(jobs))
        host.log.info("Prompts from file: %d lines", len(jobs))
        results = []
        for count, (number, line) in enumerate(jobs, 1):
            host.note(f"Prompts from file: line {count} of {len(jobs)}")
            job = line_request(request.replace(seed=seed, save_grid=False), line, options["prompt_position"],
                               host.catalog.sampler_names())
            checkpoint = host.catalog.find_checkpoint(line["sd_model"]) if "sd_model" in line else start_checkpoint
            results.append(host.process(job, checkpoint=checkpoint))
            if host.interrupted:
                break
            if options["checkbox_iterate"]:
                seed = (seed + request.batch_size * request.n_iter) % SEED_RANGE
        return host.result(request, results)


script = PromptsFromFile()
