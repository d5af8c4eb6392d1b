"""Prompt styles kept in `styles.csv` in the data folder, as the ecosystem's web UIs keep them.

The file has a header row `name,prompt,negative_prompt`; each further row is one style. Applying a
style to a prompt follows the ecosystem's rule:

- a style text containing `{prompt}` has every `{prompt}` replaced by the user's text:
  style `masterpiece, {prompt}, 4k` + prompt `a cat` -> `masterpiece, a cat, 4k`;
- otherwise the style text is appended after `, `: style `oil painting` + `a cat` ->
  `a cat, oil painting`; with an empty prompt the result is just `oil painting`, and an empty
  style text adds nothing. Both pieces are stripped of surrounding whitespace first.

Negative prompts follow the same rule with the style's `negative_prompt`. Several styles apply
one after the other, in the order given.

The file is the source of truth: it is re-read whenever it changes on disk, so hand edits show up
without a restart. It is read by its own CSV reader (engine/prompts/styles_csv.py), which has no field size limit (the
csv module stops at 131,072 characters), so a style of any length reads back. Saving rewrites the
file atomically; every row the save does not change is written back byte for byte, so what this
module does not understand (extra columns, rows without a name, duplicate names, rows with too few
or too many fields) stays as it was. A damaged file never raises. A row that cannot be read (a
quote never closed, bytes that are not text, a NUL byte) is not offered as a style, is kept in the
file unchanged, and is named in a warning that is logged and listed by `problems()`; the rows
before and after it are read as usual.

Saved cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or
a carriage return) are written with a leading `'`, and reading strips that one `'` again, so a
style reads back exactly as saved. A cell that starts with `'` followed by such a character gets
one more `'`, so the escape can always be told apart. Files written by other tools without the
escape read as they are. Saved names and texts may be at most as long as a prompt may be.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from engine.errors import RequestError
from engine.files import write_atomically
from engine.prompts.styles_csv import (
    COLUMNS,
    Row,
    Style,
    Table,
    empty_table,
    parse_table,
    serialise_table,
)
from engine.prompts.conditioning import MAX_PROMPT_CHARS

log = logging.getLogger(__name__)

PLACEHOLDER = "{prompt}"


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style text applied to one prompt (see the module docstring for the rule)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def _check_lengths(style: Style) -> None:
    """Refuse texts longer than a prompt may be: a style is pasted into prompts."""
    for name, text in zip(COLUMNS, (style.name, style.prompt, style.negative_prompt)):
        if len(text) > MAX_PROMPT_CHARS:
            raise RequestError(f"The style's {name} is too long: {len(text)} characters (at most "
                               f"{MAX_PROMPT_CHARS}, as for a prompt)", field=name)


class StyleFile:
    """The styles in one `styles.csv`. Safe to share between threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._signature: tuple | None = None
        self._styles: list[Style] = []
        self._problems: list[str] = []

    # Reading

    def _stat_signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("cannot read %s: %s", self.path, error)
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read_table(self) -> Table:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return empty_table()
        except OSError as error:
            log.warning("cannot read %s: %s", self.path, error)
            return empty_table()
        return parse_table(raw, self.path)

    def _refresh(self) -> None:
        """Re-read the file when it changed on disk (the caller holds the lock)."""
        signature = self._stat_signature()
        if signature != self._signature or signature is None:
            table = self._read_table() if signature is not None else empty_table()
            self._styles, self._problems = table.styles(), table.problems
            self._signature = signature

    def styles(self) -> list[Style]:
        """All styles in file order; re-read when the file changed on disk."""
        with self._lock:
            self._refresh()
            return list(self._styles)

    def problems(self) -> list[str]:
        """The rows of the file that cannot be read, one sentence each (see the module docstring)."""
        with self._lock:
            self._refresh()
            return list(self._problems)

    def names(self) -> list[str]:
        return [style.name for style in self.styles()]

    def get(self, name: str) -> Style | None:
        name = name.strip()
        return next((style for style in self.styles() if style.name == name), None)

    # Writing

    def save(self, style: Style) -> Style:
        """Add `style`, or replace the style of the same name in place. Returns what was stored."""
        name = style.name.strip()
        if not name:
            raise RequestError("A style needs a name.", field="name")
        stored = Style(name, style.prompt or "", style.negative_prompt or "")
        _check_lengths(stored)
        with self._lock:
            table = self._read_table()
            columns = [table.ensure_column(column) for column in COLUMNS]
            existing = table.named(name)
            row = existing[0] if existing else Row([""] * len(table.header.cells))
            for index, value in zip(columns, (stored.name, stored.prompt, stored.negative_prompt)):
                row.set(index, value)
            if not existing:
                table.rows.append(row)
            self._write(table)
        return stored

    def delete(self, name: str) -> bool:
        """Remove every row named `name`. Returns whether there was one."""
        name = name.strip()
        with self._lock:
            table = self._read_table()
            doomed = {id(row) for row in table.named(name)}
            if not doomed:
                return False
            table.rows = [row for row in table.rows if id(row) not in doomed]
            self._write(table)
            return True

    def _write(self, table: Table) -> None:
        write_atomically(self.path, serialise_table(table))
        self._signature = None  # read back on next use, so the cache matches the file exactly


class StyleStore:
    """The styles of one or more style files (--styles-file may name several, as in the web UI
    this flag comes from): a name defined in several files means the last file's style. New
    styles are saved to the first file; a changed one to the file it came from."""

    def __init__(self, paths: Path | list[Path] | tuple[Path, ...]):
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.files = [StyleFile(Path(path)) for path in paths]

    @property
    def path(self) -> Path:
        """The file new styles go to."""
        return self.files[0].path

    def styles(self) -> list[Style]:
        """All styles, by name; in file order, a later file's style replacing an earlier one's."""
        found: dict[str, Style] = {}
        for file in self.files:
            for style in file.styles():
                found[style.name] = style
        return list(found.values())

    def names(self) -> list[str]:
        return [style.name for style in self.styles()]

    def get(self, name: str) -> Style | None:
        name = name.strip()
        return next((style for style in self.styles() if style.name == name), None)

    def problems(self) -> list[str]:
        """The rows of all the files that cannot be read, one sentence each."""
        return [note for file in self.files for note in file.problems()]

    # Applying

    @staticmethod
    def _wanted(names) -> list[str]:
        if isinstance(names, str):
            names = [names]
        return [name for name in (str(name).strip() for name in (names or [])) if name]

    def unknown(self, names) -> list[str]:
        """The names among `names` that no style has (each once, in order)."""
        known = set(self.names())
        return list(dict.fromkeys(name for name in self._wanted(names) if name not in known))

    def apply(self, prompt: str, negative_prompt: str, names) -> tuple[str, str]:
        """The prompt and negative prompt with the named styles applied in order. Names no style
        has are skipped, as the web UI these files come from does (`unknown` names them)."""
        known = {style.name: style for style in self.styles()}
        for name in self._wanted(names):
            style = known.get(name)
            if style is not None:
                prompt = merge_prompt(style.prompt, prompt)
                negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def unknown_note(self, names) -> str | None:
        """A warning for a result naming the unknown styles, None when all exist."""
        unknown = self.unknown(names)
        if not unknown:
            return None
        plural = "s" if len(unknown) > 1 else ""
        return f"Style{plural} not found, left out: {', '.join(map(repr, unknown))}"

    # Writing

    def save(self, style: Style) -> Style:
        """Add `style` to the first file, or replace the style of that name where it is."""
        name = style.name.strip()
        home = next((file for file in reversed(self.files) if file.get(name) is not None), self.files[0])
        return home.save(style)

    def delete(self, name: str) -> bool:
        """Remove the style `name` from every file. Returns whether there was one."""
        return any([file.delete(name) for file in self.files])
