"""Grids with labels: pictures in rows and columns, a caption above each column and left of each
row (the X/Y/Z plot's legend, the prompt matrix's parts).

The text is drawn with DejaVu Sans when the system has it (Debian's fonts-dejavu-core), else with
the font Pillow ships; either way a grid never fails for want of a font."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_FILES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
    Path("/Library/Fonts/Arial.ttf"),
    Path("C:/Windows/Fonts/arial.ttf"),
)
TEXT_COLOUR, BACKGROUND = (0, 0, 0), (255, 255, 255)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in FONT_FILES:
        if path.is_file():
            try:
                return ImageFont.truetype(str(path), size)
            except OSError:
                continue
    return ImageFont.load_default(size)


def _wrapped(draw: ImageDraw.ImageDraw, text: str, face, width: int) -> list[str]:
    """The text in lines no wider than `width` (a single word wider than that stays whole)."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=face) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def labelled_grid(images: list[Image.Image], rows: int, column_labels: list[str], row_labels: list[str],
                  margin: int = 0) -> Image.Image:
    """`images` row by row in `rows` rows, `margin` pixels apart; `column_labels` above the
    columns and `row_labels` left of the rows (no band when all of one kind are empty)."""
    if not images:
        raise ValueError("a grid needs at least one picture")
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    face = font(max(10, (cell_w + cell_h) // 25))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(face.getbbox("Ag")[3] - face.getbbox("Ag")[1]) + 4 if hasattr(face, "getbbox") else 14
    has_top = any(str(label).strip() for label in column_labels)
    has_left = any(str(label).strip() for label in row_labels)
    left = cell_w * 3 // 4 if has_left else 0
    top_lines = [_wrapped(probe, label, face, cell_w - 8) for label in column_labels] if has_top else []
    top = (max(len(lines) for lines in top_lines) * line_h + line_h) if has_top else 0
    width = left + cols * cell_w + (cols - 1) * margin
    height = top + rows * cell_h + (rows - 1) * margin
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        x, y = left + col * (cell_w + margin), top + row * (cell_h + margin)
        canvas.paste(image.convert("RGB"), (x, y))
    draw = ImageDraw.Draw(canvas)
    for col, lines in enumerate(top_lines[:cols]):
        centre = left + col * (cell_w + margin) + cell_w / 2
        start = (top - len(lines) * line_h) / 2
        for number, line in enumerate(lines):
            draw.text((centre, start + number * line_h), line, fill=TEXT_COLOUR, font=face, anchor="ma")
    if has_left:
        for row, label in enumerate(row_labels[:rows]):
            lines = _wrapped(draw, label, face, left - 8)
            middle = top + row * (cell_h + margin) + cell_h / 2
            start = middle - len(lines) * line_h / 2
            for number, line in enumerate(lines):
                draw.text((left / 2, start + number * line_h), line, fill=TEXT_COLOUR, font=face, anchor="ma")
    return canvas
