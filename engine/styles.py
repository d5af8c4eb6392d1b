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
without a restart. Saving rewrites it atomically and keeps what this module does not understand
(extra columns, rows without a name, duplicate names) as it was. A damaged file never raises:
whatever rows can be read are used and the problem is logged.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import RequestError
from .outputs import write_atomically

log = logging.getLogger(__name__)

COLUMNS = ("name", "prompt", "negative_prompt")
PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style text applied to one prompt (see the module docstring for the rule)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


@dataclass
class _Table:
    """The file as rows of strings, kept whole so that a save can write back what it read."""

    header: list[str]
    rows: list[list[str]]
    had_header: bool = True
    bom: bool = False
    newline: str = "\r\n"
    delimiter: str = ","

    def column(self, name: str) -> int | None:
        for index, title in enumerate(self.header):
            if _title(title) == name:
                return index
        return None

    def ensure_column(self, name: str) -> int:
        index = self.column(name)
        if index is None:
            self.header.append(name)
            index = len(self.header) - 1
        return index

    @staticmethod
    def cell(row: list[str], index: int | None) -> str:
        return row[index] if index is not None and index < len(row) else ""

    def styles(self) -> list[Style]:
        name_col, prompt_col, negative_col = (self.column(c) for c in COLUMNS)
        found: dict[str, Style] = {}
        for row in self.rows:
            name = self.cell(row, name_col).strip()
            if not name:
                continue
            if name in found:
                log.warning("styles.csv: the style name %r appears more than once; the first one is used",
                            name)
                continue
            found[name] = Style(name, self.cell(row, prompt_col), self.cell(row, negative_col))
        return list(found.values())


def _title(cell: str) -> str:
    """A header cell as a column key: `Negative Prompt` -> `negative_prompt`."""
    return "_".join(cell.strip().lower().split())


def _decode(raw: bytes, path: Path) -> tuple[str, bool]:
    """The file's text and whether it began with a UTF-8 byte order mark (as Excel writes)."""
    bom = raw.startswith(codecs.BOM_UTF8)
    if bom:
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8"), bom
    except UnicodeDecodeError as error:
        try:
            text = raw.decode("cp1252")
            log.warning("%s is not UTF-8 (%s); read it as Windows-1252 (as older Excel saves CSV). "
                        "Saving a style rewrites it as UTF-8.", path, error.reason)
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            log.warning("%s is not valid UTF-8 (%s); unreadable bytes were replaced with U+FFFD",
                        path, error.reason)
        return text, bom


def _parse(raw: bytes, path: Path) -> _Table:
    text, bom = _decode(raw, path)
    if "\x00" in text:
        log.warning("%s contains NUL characters; they were ignored", path)
        text = text.replace("\x00", "")
    newline = "\n" if ("\n" in text and "\r\n" not in text) else "\r\n"
    first_line = text.lstrip().split("\n", 1)[0]
    # Excel in locales with a decimal comma writes `;` between fields; read (and keep) that.
    delimiter = ";" if ("," not in first_line and "name" in
                        [_title(cell) for cell in first_line.split(";")]) else ","

    rows: list[list[str]] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                rows.append(row)
    except csv.Error as error:
        log.warning("%s could not be read past line %d (%s); the rows before it are used",
                    path, reader.line_num, error)

    if not rows:
        return _Table(header=list(COLUMNS), rows=[], had_header=False, bom=bom, newline=newline,
                      delimiter=delimiter)
    first = [_title(cell) for cell in rows[0]]
    if "name" in first:
        header, body, had_header = rows[0], rows[1:], True
        missing = [c for c in COLUMNS if c not in first]
        if missing:
            log.warning("%s has no %s column; those texts are taken as empty", path,
                        " or ".join(missing))
    else:
        log.warning("%s has no header row; reading its columns as %s", path, ",".join(COLUMNS))
        header, body, had_header = list(COLUMNS), rows, False
    ragged = sum(1 for row in body if len(row) != len(header))
    if ragged:
        log.warning("%s: %d row(s) do not have %d fields; missing fields are taken as empty",
                    path, ragged, len(header))
    return _Table(header=list(header), rows=body, had_header=had_header, bom=bom, newline=newline,
                  delimiter=delimiter)


def _serialise(table: _Table) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=table.newline, delimiter=table.delimiter)
    writer.writerow(table.header)
    writer.writerows(table.rows)
    data = buffer.getvalue().encode("utf-8")
    return codecs.BOM_UTF8 + data if table.bom else data


class StyleFile:
    """The styles in one `styles.csv`. Safe to share between threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._signature: tuple | None = None
        self._styles: list[Style] = []

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

    def _read_table(self) -> _Table:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _Table(header=list(COLUMNS), rows=[], had_header=False)
        except OSError as error:
            log.warning("cannot read %s: %s", self.path, error)
            return _Table(header=list(COLUMNS), rows=[], had_header=False)
        return _parse(raw, self.path)

    def styles(self) -> list[Style]:
        """All styles in file order; re-read when the file changed on disk."""
        with self._lock:
            signature = self._stat_signature()
            if signature != self._signature or signature is None:
                self._styles = self._read_table().styles() if signature is not None else []
                self._signature = signature
            return list(self._styles)

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
        with self._lock:
            table = self._read_table()
            name_col = table.ensure_column("name")
            prompt_col = table.ensure_column("prompt")
            negative_col = table.ensure_column("negative_prompt")
            values = {name_col: stored.name, prompt_col: stored.prompt,
                      negative_col: stored.negative_prompt}
            for row in table.rows:
                if table.cell(row, name_col).strip() == name:
                    for index, value in values.items():
                        if index >= len(row):
                            row.extend([""] * (index + 1 - len(row)))
                        row[index] = value
                    break
            else:
                row = [""] * len(table.header)
                for index, value in values.items():
                    row[index] = value
                table.rows.append(row)
            self._write(table)
        return stored

    def delete(self, name: str) -> bool:
        """Remove every row named `name`. Returns whether there was one."""
        name = name.strip()
        with self._lock:
            table = self._read_table()
            name_col = table.column("name")
            if name_col is None:
                return False
            kept = [row for row in table.rows if table.cell(row, name_col).strip() != name]
            if len(kept) == len(table.rows):
                return False
            table.rows = kept
            self._write(table)
            return True

    def _write(self, table: _Table) -> None:
        write_atomically(self.path, _serialise(table))
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
