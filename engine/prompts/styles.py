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
without a restart. It is read by this module's own CSV reader, which has no field size limit (the
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

import codecs
import csv
import io
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import RequestError
from engine.output.writer import write_atomically
from engine.request import MAX_PROMPT_CHARS

log = logging.getLogger(__name__)

COLUMNS = ("name", "prompt", "negative_prompt")
PLACEHOLDER = "{prompt}"
QUOTE = '"'
# OWASP's list of first characters that make a spreadsheet treat a CSV cell as a formula.
FORMULA_STARTS = frozenset("=+-@\t\r")
FORMULA_ESCAPE = "'"
# How many damaged rows one read names in full; a file of binary junk would otherwise flood the log.
MAX_NAMED_PROBLEMS = 10


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


# Formula escapes


def _formula_like(text: str) -> bool:
    """Whether `text`, after any leading `'`s, starts as a spreadsheet formula would."""
    return text.lstrip(FORMULA_ESCAPE)[:1] in FORMULA_STARTS


def escape_cell(text: str) -> str:
    """`text` as written to the file: a spreadsheet shows it as text instead of running it."""
    return FORMULA_ESCAPE + text if _formula_like(text) else text


def unescape_cell(text: str) -> str:
    """The text of a cell as read: exactly the `'` that `escape_cell` adds is taken off."""
    if text.startswith(FORMULA_ESCAPE) and _formula_like(text[1:]):
        return text[1:]
    return text


# The file as lines and rows


@dataclass
class _Line:
    """One physical line of the file with its line break: the bytes, and the text to parse."""

    raw: bytes
    text: str  # undecodable bytes replaced, so quotes can still be found around them
    problem: str | None = None  # why the line is not text


@dataclass
class _Row:
    """One CSV record: its cells, and the bytes it was read from while it is unchanged."""

    cells: list[str]
    raw: bytes | None = None  # None: written from `cells`
    line: int = 0  # the record's first line in the file, counted from 1
    damaged: str | None = None  # why it could not be read; such a row is only ever written back
    preview: str = ""

    @property
    def blank(self) -> bool:
        return not any(cell.strip() for cell in self.cells)

    def set(self, index: int, value: str) -> None:
        if index >= len(self.cells):
            self.cells.extend([""] * (index + 1 - len(self.cells)))
        self.cells[index] = value
        self.raw = None


@dataclass
class _Table:
    """The file as rows, kept whole so that a save can write back what it read."""

    header: _Row
    rows: list[_Row]  # every record in file order, the header among them when the file has one
    had_header: bool = True
    bom: bool = False
    newline: str = "\r\n"
    delimiter: str = ","
    problems: list[str] = field(default_factory=list)  # the rows that could not be read

    def column(self, name: str) -> int | None:
        for index, title in enumerate(self.header.cells):
            if _title(title) == name:
                return index
        return None

    def ensure_column(self, name: str) -> int:
        index = self.column(name)
        if index is None:
            self.header.set(len(self.header.cells), name)
            index = len(self.header.cells) - 1
        return index

    @staticmethod
    def cell(row: _Row, index: int | None) -> str:
        return row.cells[index] if index is not None and index < len(row.cells) else ""

    def entries(self) -> list[_Row]:
        """The rows that may hold a style: read, not blank, not the header."""
        return [row for row in self.rows
                if row is not self.header and row.damaged is None and not row.blank]

    def named(self, name: str) -> list[_Row]:
        name_col = self.column("name")
        return [row for row in self.entries() if self.cell(row, name_col).strip() == name]

    def styles(self) -> list[Style]:
        name_col, prompt_col, negative_col = (self.column(c) for c in COLUMNS)
        found: dict[str, Style] = {}
        for row in self.entries():
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


# Reading


def _encoding(lines: list[bytes], bom: bool) -> str:
    """UTF-8, unless the file looks like an older Excel's Windows-1252 save: then no line with
    other characters than ASCII is UTF-8, and all of them are Windows-1252. (A UTF-8 file with a
    damaged line stays UTF-8, so its good lines keep their characters.)"""
    non_ascii = [line for line in lines if not line.isascii()]
    if bom or not non_ascii or any(_decodes(line, "utf-8") for line in non_ascii):
        return "utf-8"
    return "cp1252" if all(_decodes(line, "cp1252") for line in non_ascii) else "utf-8"


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _lines(chunks: list[bytes], encoding: str) -> list[_Line]:
    """The file's physical lines, decoded one by one, so bad bytes spoil only their own line
    (a line break byte is never part of a multi-byte UTF-8 character)."""
    lines = []
    for chunk in chunks:
        problem = None if _decodes(chunk, encoding) else f"bytes that are not {encoding.upper()} text"
        text = chunk.decode(encoding, errors="replace")
        if problem is None and "\x00" in text:
            problem = "a NUL byte"
        lines.append(_Line(chunk, text, problem))
    return lines


def _body(text: str) -> str:
    """A line without its line break (one of \\r\\n, \\n, \\r: the lines are split at those)."""
    return text.rstrip("\r\n")


def _quoted(lines: list[_Line], at: int, pos: int) -> tuple[str | None, int, int]:
    """The value of a quoted field whose opening quote is just before `lines[at].text[pos]`, with
    the line and position just after its closing quote; a None value when it never closes."""
    parts = []
    while at < len(lines):
        text = lines[at].text
        close = text.find(QUOTE, pos)
        if close == -1:  # the value goes on, line break included, on the next line
            parts.append(text[pos:])
            at, pos = at + 1, 0
            continue
        parts.append(text[pos:close])
        if text.startswith(QUOTE, close + 1):  # "" is one quote character in the value
            parts.append(QUOTE)
            pos = close + 2
            continue
        return "".join(parts), at, close + 1
    return None, at, 0


def _record(lines: list[_Line], start: int, delimiter: str) -> tuple[list[str], int, str | None]:
    """The cells of the record starting at line `start`, the line after it, and what makes it
    unreadable as CSV (None when nothing does). Reads as the csv module does, but without its field
    size limit, and it names a quote that runs away across lines instead of following it."""
    cells: list[str] = []
    at, pos = start, 0
    body = _body(lines[at].text)  # once per line: a junk line may hold very many cells
    while True:
        if body.startswith(QUOTE, pos):
            value, end_at, pos = _quoted(lines, at, pos + 1)
            if value is None:
                return cells, end_at, "a quote is never closed"
            spanned = end_at != at
            if spanned:
                at, body = end_at, _body(lines[end_at].text)
            if pos < len(body) and body[pos] != delimiter:
                if spanned:  # most likely a stray quote that swallowed the lines after it
                    return cells, at + 1, "a quote is not closed where its cell ends"
                # Within one line, the text after the quote joins the value, as the csv module has it.
                end = body.find(delimiter, pos)
                end = len(body) if end == -1 else end
                value, pos = value + body[pos:end], end
        else:
            end = body.find(delimiter, pos)
            end = len(body) if end == -1 else end
            value, pos = body[pos:end], end
        cells.append(value)
        if pos >= len(body):
            return cells, at + 1, None
        pos += 1  # past the delimiter


def _rows(lines: list[_Line], delimiter: str) -> list[_Row]:
    """Every record in the file. A record that cannot be read is one damaged row of the line it
    starts on when its quoting is broken (the next record is looked for on the next line, so one
    stray quote does not hide the rest of the file), or of all its lines when only their bytes are."""
    rows: list[_Row] = []
    start = 0
    while start < len(lines):
        cells, end, problem = _record(lines, start, delimiter)
        if problem is not None:
            end = start + 1
        else:
            problem = next((line.problem for line in lines[start:end] if line.problem), None)
        raw = b"".join(line.raw for line in lines[start:end])
        if problem is None:
            rows.append(_Row([unescape_cell(cell) for cell in cells], raw, start + 1))
        else:
            rows.append(_Row([], raw, start + 1, problem, _preview(lines[start].text)))
        start = end
    return rows


def _preview(text: str, length: int = 60) -> str:
    body = _body(text)
    return repr(body[:length]) + ("..." if len(body) > length else "")


def _damage_notes(rows: list[_Row], where: str) -> list[str]:
    """One sentence per row that could not be read, naming it by line and its start."""
    damaged = [row for row in rows if row.damaged]
    notes = [f"{where} line {row.line} cannot be read ({row.damaged}); it is kept in the file as "
             f"it is and not offered as a style: {row.preview}" for row in damaged[:MAX_NAMED_PROBLEMS]]
    if len(damaged) > MAX_NAMED_PROBLEMS:
        notes.append(f"{where}: {len(damaged) - MAX_NAMED_PROBLEMS} more lines cannot be read and are "
                     "kept in the file as they are")
    return notes


def _delimiter(lines: list[_Line]) -> str:
    # Excel in locales with a decimal comma writes `;` between fields; read (and keep) that.
    first_line = next((_body(line.text) for line in lines if line.text.strip()), "")
    if "," not in first_line and "name" in [_title(cell) for cell in first_line.split(";")]:
        return ";"
    return ","


def _parse(raw: bytes, path: Path) -> _Table:
    bom = raw.startswith(codecs.BOM_UTF8)
    if bom:
        raw = raw[len(codecs.BOM_UTF8):]
    chunks = raw.splitlines(keepends=True)
    encoding = _encoding(chunks, bom)
    if encoding != "utf-8":
        log.warning("%s is not UTF-8; read it as Windows-1252 (as older Excel saves CSV). "
                    "Saving a style rewrites it as UTF-8.", path)
    lines = _lines(chunks, encoding)
    newline = "\n" if (b"\n" in raw and b"\r\n" not in raw) else "\r\n"
    delimiter = _delimiter(lines)
    rows = _rows(lines, delimiter)
    if encoding != "utf-8":  # these bytes cannot go into the UTF-8 file a save writes
        for row in rows:
            if row.damaged is None:
                row.raw = None

    problems = _damage_notes(rows, path.name)
    for note in _damage_notes(rows, str(path)):
        log.warning("%s", note)
    table = _Table(header=_Row(list(COLUMNS)), rows=rows, had_header=False, bom=bom,
                   newline=newline, delimiter=delimiter, problems=problems)
    _find_header(table, path)
    return table


def _find_header(table: _Table, path: Path) -> None:
    """Take the first readable row as the header when it names a `name` column."""
    first = next((row for row in table.rows if row.damaged is None and not row.blank), None)
    if first is None:
        return
    titles = [_title(cell) for cell in first.cells]
    if "name" in titles:
        table.header, table.had_header = first, True
        missing = [c for c in COLUMNS if c not in titles]
        if missing:
            log.warning("%s has no %s column; those texts are taken as empty", path,
                        " or ".join(missing))
    else:
        log.warning("%s has no header row; reading its columns as %s", path, ",".join(COLUMNS))
    ragged = [row for row in table.entries() if len(row.cells) != len(table.header.cells)]
    if ragged:
        log.warning("%s: %d row(s) do not have %d fields (line %s); missing fields are taken as "
                    "empty, extra ones are kept", path, len(ragged), len(table.header.cells),
                    ", ".join(str(row.line) for row in ragged[:MAX_NAMED_PROBLEMS]))


# Writing


def _format_row(cells: list[str], table: _Table) -> bytes:
    buffer = io.StringIO(newline="")
    # Written with \r\n, whatever the file uses: the csv module quotes a cell holding a line break
    # character only when that character is in its line terminator, and a lone \r in an unquoted
    # cell would end the row when read back.
    csv.writer(buffer, lineterminator="\r\n", delimiter=table.delimiter).writerow(
        [escape_cell(cell) for cell in cells])
    return (buffer.getvalue()[:-2] + table.newline).encode("utf-8")


def _serialise(table: _Table) -> bytes:
    rows = table.rows if table.had_header else [table.header, *table.rows]
    pieces = [row.raw if row.raw is not None else _format_row(row.cells, table) for row in rows]
    # A last line without a line break gets one when something is written after it.
    for index, piece in enumerate(pieces[:-1]):
        if not piece.endswith((b"\n", b"\r")):
            pieces[index] = piece + table.newline.encode()
    data = b"".join(pieces)
    return codecs.BOM_UTF8 + data if table.bom else data


def _check_lengths(style: Style) -> None:
    """Refuse texts longer than a prompt may be: a style is pasted into prompts."""
    for name, text in zip(COLUMNS, (style.name, style.prompt, style.negative_prompt)):
        if len(text) > MAX_PROMPT_CHARS:
            raise RequestError(f"The style's {name} is too long: {len(text)} characters (at most "
                               f"{MAX_PROMPT_CHARS}, as for a prompt)", field=name)


def _empty_table() -> _Table:
    return _Table(header=_Row(list(COLUMNS)), rows=[], had_header=False)


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

    def _read_table(self) -> _Table:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _empty_table()
        except OSError as error:
            log.warning("cannot read %s: %s", self.path, error)
            return _empty_table()
        return _parse(raw, self.path)

    def _refresh(self) -> None:
        """Re-read the file when it changed on disk (the caller holds the lock)."""
        signature = self._stat_signature()
        if signature != self._signature or signature is None:
            table = self._read_table() if signature is not None else _empty_table()
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
            row = existing[0] if existing else _Row([""] * len(table.header.cells))
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
