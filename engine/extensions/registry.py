"""Extensions: the contract every always-on add-on implements, and the loader that finds them.

An extension is a folder under extensions/ (built in) or <data dir>/extensions/ (third party)
whose module exports one `extension` object, an instance of `Extension`, or one `script`, an
instance of `engine.extensions.script.Script` (the second kind: picked one at a time, it runs the
job its own way; see script.py). It declares its fields;
the UI renders them and their values reach the extension through `GenerationRequest.extensions`.
Hooks:
  - `patch(pipe, request, options)` -> a context manager that changes the model for one job and
    undoes the change on exit, even on error;
  - `process(image, request, options, ctx)` -> image, run on each decoded image, in order;
  - `infotext(request, options)` -> {key: value} added to each image's parameters;
  - `summary(options, width, height)` -> a live line the UI shows under the fields.
An extension that fails to import or raises in a hook is logged, marked failed and skipped.
Nothing is ever downloaded or installed by the loader.

When code runs: the registry imports extensions only when it is made, which app.py does once at
start. It imports the built-in ones (they are the app's own code) and the third-party ones that
are enabled; a disabled third-party extension, and one installed while the app runs, is listed
but never imported until it is enabled and the app restarts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from engine.errors import JobInterrupted, RequestError, UserError
from engine.extensions.fields import FIELD_KINDS, Field  # noqa: F401  (re-exported)
from engine.extensions.script import Script

log = logging.getLogger(__name__)


# Raised through a hook but not the hook's fault: a stopped job, a refused request, memory
# running out. They end the job as usual and leave the extension enabled.
NOT_EXTENSION_FAULTS = (JobInterrupted, UserError, MemoryError, torch.OutOfMemoryError)


class Extension:
    """Subclass (or instantiate) and export as `extension` from the extension's module."""

    name: str = ""               # the key in request.extensions and in alwayson_scripts
    title: str = ""              # what the UI shows
    order: int = 100             # lower runs first; ties broken by name
    modes: tuple[str, ...] = ("txt2img", "img2img")
    fields: tuple[Field, ...] = ()
    description: str = ""

    def is_active(self, options: Mapping[str, Any]) -> bool:
        """Whether this job uses the extension: by default, its "enabled" field."""
        return bool(options.get("enabled", False))

    def attach(self, catalog: Any) -> None:
        """Called once at start with the names of what is installed and checks that name a
        missing one (engine.extensions.script.Catalog): upscalers, face restorers, checkpoints,
        VAEs, styles, samplers. Never the libraries themselves."""

    def check(self, options: Mapping[str, Any]) -> None:
        """Refuse options that cannot work here (raise RequestError) before the job is queued."""

    def patch(self, pipe, request, options: Mapping[str, Any]):
        return None

    def process(self, image, request, options: Mapping[str, Any], ctx: Any):
        return image

    def infotext(self, request, options: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def summary(self, options: Mapping[str, Any], width: int, height: int) -> str | None:
        """A live line the UI shows under the fields (e.g. hires fix's target size), or None."""
        return None


@dataclass
class LoadedExtension:
    name: str
    path: Path
    builtin: bool
    extension: Extension | None = None
    error: str | None = None
    enabled: bool = True

    @property
    def is_script(self) -> bool:
        return isinstance(self.extension, Script)

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        if self.extension is None:
            return "not loaded"  # found but not imported: its code has not run in this session
        return "enabled" if self.enabled else "disabled"

    @property
    def waiting(self) -> bool:
        """Found but not imported (disabled at start, or installed since): it loads at a start
        where it is enabled."""
        return self.extension is None and not self.error


@dataclass
class ActiveExtension:
    """An extension in use by one job, with that job's option values."""

    entry: LoadedExtension
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def extension(self) -> Extension:
        return self.entry.extension


class ExtensionRegistry:
    """Finds, loads and orders the extensions; remembers which failed."""

    def __init__(self, folders: list[tuple[Path, bool]], disabled: set[str] | None = None):
        """The start of the app: imports the built-in extensions and the third-party ones
        `disabled` does not name (folder names); disabled third-party ones are only listed."""
        self.folders = folders            # (folder, holds built-ins)
        self._lock = threading.Lock()
        disabled = set(disabled or ())
        self._entries = sorted((_at_start(path, builtin, disabled) for path, builtin in self._found()),
                               key=_sort_key)

    def _found(self) -> Iterator[tuple[Path, bool]]:
        for folder, builtin in self.folders:
            for path in _extension_folders(folder):
                yield path, builtin

    def discover(self) -> list[LoadedExtension]:
        """List the extension folders added since start (an install), disabled and not
        loaded: nothing is imported here, so no new code runs before a restart that enables it.
        Returns the new entries."""
        with self._lock:
            known = {entry.path for entry in self._entries}
            new = [_listed(path, builtin) for path, builtin in self._found() if path not in known]
            self._entries = sorted(self._entries + new, key=_sort_key)
        return new

    @property
    def entries(self) -> list[LoadedExtension]:
        with self._lock:
            return list(self._entries)

    def loaded(self) -> list[LoadedExtension]:
        """Extensions that loaded (enabled or not), in run order."""
        return [e for e in self.entries if e.extension is not None]

    def choosable(self) -> list[LoadedExtension]:
        """Those a user can enable or disable: the loaded ones and those waiting for a start."""
        return [e for e in self.entries if e.extension is not None or e.waiting]

    def for_mode(self, mode: str) -> list[LoadedExtension]:
        """The always-on extensions that act in this mode, in run order."""
        return [e for e in self.loaded() if e.enabled and not e.error and not e.is_script
                and mode in e.extension.modes]

    def scripts(self, mode: str) -> list[LoadedExtension]:
        """The scripts a user may pick in this mode, in dropdown order."""
        found = [e for e in self.loaded() if e.enabled and not e.error and e.is_script
                 and mode in e.extension.modes]
        return sorted(found, key=lambda e: (e.extension.order, e.extension.title.lower()))

    def find(self, name: str) -> LoadedExtension | None:
        """An always-on extension by folder name, name or title (any case)."""
        wanted = name.strip().lower()
        for entry in self.loaded():
            if not entry.is_script and \
                    wanted in (entry.name.lower(), entry.extension.name.lower(), entry.extension.title.lower()):
                return entry
        return None

    def find_script(self, name: str, mode: str) -> LoadedExtension:
        """The script called `name` (its name, title or an alias, any case) for this mode;
        RequestError naming the scripts there are."""
        for entry in self.loaded():
            if entry.is_script and (entry.extension.matches(name) or entry.name.lower() == name.strip().lower()):
                if entry.error or not entry.enabled:
                    raise RequestError(f"Script '{entry.extension.title}' is disabled"
                                       + (f" (it failed: {entry.error})" if entry.error else
                                          ": enable it in the Extensions tab"), "script_name")
                if mode not in entry.extension.modes:
                    raise RequestError(f"Script '{entry.extension.title}' does not work in {mode}", "script_name")
                return entry
        known = ", ".join(e.extension.title for e in self.scripts(mode)) or "none"
        raise RequestError(f"Script '{name}' not found. Scripts in {mode}: {known}", "script_name")

    def set_enabled(self, names: set[str]) -> None:
        with self._lock:
            for entry in self._entries:
                entry.enabled = entry.name in names

    def mark_failed(self, entry: LoadedExtension, error: BaseException, hook: str) -> None:
        if isinstance(error, NOT_EXTENSION_FAULTS):
            raise error  # the job ends as it would without extensions; the extension is fine
        log.error("extension %s failed in %s; it is skipped from now on", entry.name, hook,
                  exc_info=error)
        entry.error = f"{hook}: {type(error).__name__}: {error}"

    def check(self, mode: str, requested: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """The request's extension options, each checked against its fields, keyed by name."""
        checked: dict[str, dict[str, Any]] = {}
        for name, values in (requested or {}).items():
            entry = self.find(name)
            if entry is None:
                self._refuse_unknown(name)
            if not isinstance(values, Mapping):
                raise RequestError(f"{entry.name}: options must be an object of field values", "extensions")
            fields = {f.name: f for f in entry.extension.fields}
            options = {}
            for key, value in values.items():
                if key not in fields:
                    raise RequestError(f"{entry.name}: unknown field '{key}'. Fields: "
                                       f"{', '.join(fields) or 'none'}", "extensions")
                options[key] = fields[key].coerce(value, entry.extension.title or entry.name)
            entry.extension.check(options)
            checked[entry.name] = options
        return checked

    def _refuse_unknown(self, name: str) -> None:
        waiting = next((e for e in self.entries if e.waiting and e.name.lower() == name.strip().lower()), None)
        if waiting is not None:
            raise RequestError(f"Extension '{waiting.name}' is installed but not loaded: enable it in the "
                               "Extensions tab and restart the web UI", "extensions")
        known = ", ".join(e.name for e in self.loaded()) or "none"
        raise RequestError(f"Extension not found: '{name}'. Installed: {known}", "extensions")

    def active(self, mode: str, requested: Mapping[str, Mapping[str, Any]]) -> list[ActiveExtension]:
        """The extensions a job runs, in order, with defaults filled in."""
        chosen = []
        for entry in self.for_mode(mode):
            options = {f.name: f.default for f in entry.extension.fields}
            options.update(requested.get(entry.name, {}))
            try:
                if entry.extension.is_active(options):
                    chosen.append(ActiveExtension(entry, options))
            except Exception as error:  # a broken extension must not stop the job
                self.mark_failed(entry, error, "is_active")
        return chosen


def _sort_key(entry: LoadedExtension):
    order = entry.extension.order if entry.extension is not None else 10**6
    return (order, entry.name)


def _extension_folders(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith((".", "_")) and (child / "__init__.py").is_file():
            yield child


def _at_start(path: Path, builtin: bool, disabled: set[str]) -> LoadedExtension:
    """Built-ins are the app's own code: always imported, so enabling one needs no restart.
    A third-party extension runs code of unknown origin: imported only when enabled."""
    enabled = path.name not in disabled
    return _load(path, builtin, enabled) if builtin or enabled else _listed(path, builtin)


def _listed(path: Path, builtin: bool) -> LoadedExtension:
    """An extension found but not imported (its code does not run), disabled until a user
    enables it; it loads at the next start where it is enabled."""
    return LoadedExtension(path.name, path, builtin, enabled=False)


def _load(path: Path, builtin: bool, enabled: bool) -> LoadedExtension:
    entry = LoadedExtension(path.name, path, builtin, enabled=enabled)
    module_name = f"sd_studio_extension_{path.name}"
    try:
        spec = importlib.util.spec_from_file_location(
            module_name, path / "__init__.py", submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        extension = getattr(module, "extension", None) or getattr(module, "script", None)
        if not isinstance(extension, (Extension, Script)):
            raise TypeError("the module must export `extension`, an engine.extensions.Extension, "
                            "or `script`, an engine.extensions.Script")
        extension.name = extension.name or path.name
        extension.title = extension.title or extension.name
        entry.extension = extension
    except Exception as error:  # any import-time failure: list it as failed, keep the app running
        sys.modules.pop(module_name, None)
        entry.error = f"import: {type(error).__name__}: {error}"
        log.error("extension %s failed to load:\n%s", path.name, traceback.format_exc())
    return entry


@contextlib.contextmanager
def patched(registry: ExtensionRegistry, active: list[ActiveExtension], pipe, request):
    """Enter every active extension's patch for one job; undo them all on exit, even on error."""
    with contextlib.ExitStack() as stack:
        for item in active:
            try:
                manager = item.extension.patch(pipe, request, item.options)
                if manager is not None:
                    stack.enter_context(manager)
            except Exception as error:
                registry.mark_failed(item.entry, error, "patch")
        yield


def process(registry: ExtensionRegistry, active: list[ActiveExtension], image, request, ctx):
    for item in active:
        if item.entry.error:
            continue
        try:
            image = item.extension.process(image, request, item.options, ctx)
        except Exception as error:
            registry.mark_failed(item.entry, error, "process")
    return image


def infotext(registry: ExtensionRegistry, active: list[ActiveExtension], request) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in active:
        try:
            params.update(item.extension.infotext(request, item.options))
        except Exception as error:
            registry.mark_failed(item.entry, error, "infotext")
    return params
