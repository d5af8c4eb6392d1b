"""Images are saved atomically under the ecosystem's names, grids only for two or more."""

import datetime as dt

import pytest
from PIL import Image

from engine import files
from engine.files import write_atomically
from engine.output.writer import OutputWriter


def test_names_use_the_next_free_five_digit_number(tmp_path):
    writer = OutputWriter(tmp_path)
    folder = writer.images_dir("txt2img")
    folder.mkdir(parents=True)
    (folder / "00041-999.png").write_bytes(b"x")
    (folder / "notes.txt").write_text("ignored")
    path = writer.save_image(Image.new("RGB", (8, 8)), "txt2img", 1234, "p\nSteps: 1, Seed: 1, Size: 8x8")
    assert path == folder / "00042-1234.png"
    assert folder == tmp_path / "txt2img-images" / dt.date.today().isoformat()
    assert Image.open(path).info["parameters"].startswith("p\nSteps: 1")


def test_grid_names_and_layout(tmp_path):
    writer = OutputWriter(tmp_path)
    images = [Image.new("RGB", (8, 4), color) for color in ("red", "green", "blue")]
    path = writer.save_grid(images, "txt2img", "info")
    assert path.name == "grid-0000.png"
    assert path.parent.parent.name == "txt2img-grids"
    grid = Image.open(path)
    assert grid.size == (16, 8)  # 2 columns x 2 rows for 3 images
    assert grid.getpixel((9, 1)) == (0, 128, 0)


def test_atomic_write_leaves_nothing_behind_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "image.png"

    def broken_fsync(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomically(target, b"data")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    write_atomically(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
