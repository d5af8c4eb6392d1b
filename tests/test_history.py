"""The saved pictures the History tab lists: newest first, by kind, a page at a time, only whole
pictures, never anything outside the outputs folder, each with its parameters read back."""

from __future__ import annotations

import datetime as dt
import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from engine.errors import NotFoundError, UserError
from engine.output.history import SavedImages
from engine.output.infotext import build
from engine.output.writer import OutputWriter, png_bytes
from engine.settings.store import Settings

TODAY = dt.date.today().isoformat()


def infotext(seed: int) -> str:
    return build(f"a lighthouse number {seed}", "fog", {"Steps": 3, "Sampler": "Euler", "CFG scale": 7,
                                                         "Seed": seed, "Size": "64x48"})


def noise(seed: int, size=(64, 48)) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


@pytest.fixture
def settings(tmp_path):
    return Settings(tmp_path / "config.json")


@pytest.fixture
def writer(tmp_path, settings):
    return OutputWriter(tmp_path / "outputs", settings)


@pytest.fixture
def saved(writer):
    return SavedImages(writer)


def aged(path, seconds_ago: float):
    """Give a file a modification time `seconds_ago` before now (the order the listing sorts by)."""
    moment = time.time() - seconds_ago
    os.utime(path, (moment, moment))
    return path


def save(writer, mode: str, seed: int, seconds_ago: float):
    return aged(writer.save_image(noise(seed), mode, seed, infotext(seed)), seconds_ago)


def names(items) -> list[str]:
    return [item.name for item in items]


def test_newest_first_by_modification_time_whatever_the_folder(writer, saved):
    save(writer, "txt2img", 1, 300)
    save(writer, "img2img", 2, 100)
    save(writer, "txt2img", 3, 200)
    extras = aged(writer.save_extras(noise(4), infotext(4), "Postprocess upscaler: Lanczos"), 50)
    assert names(saved.newest_first("all")) == [
        f"extras-images/{TODAY}/{extras.name}",
        f"img2img-images/{TODAY}/00000-2.png",
        f"txt2img-images/{TODAY}/00001-3.png",
        f"txt2img-images/{TODAY}/00000-1.png",
    ]


def test_pictures_saved_in_the_same_tick_list_the_higher_number_first(writer, saved):
    first, second = (writer.save_image(noise(seed), "txt2img", seed, infotext(seed)) for seed in (7, 8))
    moment = time.time()
    for path in (first, second):
        os.utime(path, (moment, moment))
    assert names(saved.newest_first()) == [f"txt2img-images/{TODAY}/00001-8.png",
                                           f"txt2img-images/{TODAY}/00000-7.png"]


def test_kinds_list_their_own_folders(writer, saved):
    save(writer, "txt2img", 1, 40)
    save(writer, "img2img", 2, 30)
    writer.save_extras(noise(3), infotext(3), "x")
    aged(writer.save_grid([noise(5), noise(6)], "txt2img", infotext(5)), 20)
    aged(writer.save_grid([noise(7), noise(8)], "img2img", infotext(7)), 10)
    assert names(saved.newest_first("txt2img")) == [f"txt2img-images/{TODAY}/00000-1.png"]
    assert names(saved.newest_first("img2img")) == [f"img2img-images/{TODAY}/00000-2.png"]
    assert names(saved.newest_first("extras")) == [f"extras-images/{TODAY}/00000.png"]
    assert names(saved.newest_first("grids")) == [f"img2img-grids/{TODAY}/grid-0000.png",
                                                   f"txt2img-grids/{TODAY}/grid-0000.png"]
    assert len(saved.newest_first("all")) == 5
    with pytest.raises(NotFoundError, match="Unknown kind"):
        saved.newest_first("videos")


def test_a_kind_follows_the_folder_settings(writer, saved, settings):
    save(writer, "txt2img", 1, 20)
    settings.update({"outdir_txt2img_samples": "outputs/mine", "save_to_dirs": False})
    save(writer, "txt2img", 2, 10)
    # The folder the settings name now; the whole outputs folder still holds both.
    assert names(saved.newest_first("txt2img")) == ["mine/00000-2.png"]
    assert names(saved.newest_first("all")) == ["mine/00000-2.png", f"txt2img-images/{TODAY}/00000-1.png"]


def test_pages_of_a_given_size_and_out_of_range_pages_are_clamped(writer, saved):
    for seed in range(5):
        save(writer, "txt2img", seed, 100 - seed)  # seed 4 is the newest
    first = saved.page("all", 1, 2)
    assert (first.number, first.pages, first.total) == (1, 3, 5)
    assert [item.name.rsplit("-", 1)[1] for item in first.images] == ["4.png", "3.png"]
    last = saved.page("all", 3, 2)
    assert [item.name.rsplit("-", 1)[1] for item in last.images] == ["0.png"]
    assert saved.page("all", 99, 2).number == 3
    assert saved.page("all", -1, 2).number == 1


def test_nothing_saved_yet_is_one_empty_page(tmp_path):
    empty = SavedImages(OutputWriter(tmp_path / "not-made-yet")).page("all", 1, 10)
    assert (empty.images, empty.number, empty.pages, empty.total) == ([], 1, 1, 0)


def test_unfinished_writes_sidecars_and_other_files_are_not_listed(writer, saved, settings):
    settings.update({"save_txt": True})
    kept = save(writer, "txt2img", 1, 10)
    folder = kept.parent
    (folder / ".tmp-k3j2h1.part").write_bytes(png_bytes(noise(2), infotext(2))[:100])  # a write cut short
    (folder / ".tmp-whole.png").write_bytes(png_bytes(noise(3), infotext(3)))
    (folder / "notes.json").write_text("{}")
    (folder / ".thumbnails").mkdir()
    (folder / ".thumbnails" / "small.png").write_bytes(png_bytes(noise(4), None))
    assert kept.with_suffix(".txt").exists()
    assert names(saved.newest_first()) == [f"txt2img-images/{TODAY}/00000-1.png"]


def test_jpeg_and_webp_pictures_are_listed_with_their_parameters(writer, saved, settings):
    for seed, file_format in enumerate(("png", "jpg", "webp")):
        settings.update({"samples_format": file_format})
        save(writer, "txt2img", seed, 10 - seed)
    listed = saved.newest_first()
    assert [item.path.suffix for item in listed] == [".webp", ".jpg", ".png"]
    assert [saved.infotext(item) for item in listed] == [infotext(2), infotext(1), infotext(0)]


def test_parameters_and_picture_read_back(writer, saved):
    path = save(writer, "txt2img", 42, 1)
    item = saved.find(f"txt2img-images/{TODAY}/{path.name}")
    assert item.path == path.resolve()
    assert saved.infotext(item) == infotext(42)
    picture = saved.open(item)
    assert picture.size == (64, 48)
    assert np.array_equal(np.asarray(picture), np.asarray(noise(42)))
    assert picture.info["parameters"] == infotext(42)


def test_a_large_picture_is_shown_scaled_down_and_keeps_its_parameters(writer, saved, settings):
    settings.update({"samples_format": "jpg"})
    item = saved.find(writer.save_image(noise(1, (600, 300)), "extras", 1, infotext(1))
                      .relative_to(writer.root).as_posix())
    preview = saved.open(item, max_side=200)
    assert preview.size == (200, 100)
    # The gallery re-encodes it as PNG: the parameters go along as a text chunk.
    again = Image.open(io.BytesIO(png_bytes(preview, preview.info["parameters"])))
    assert again.info["parameters"] == infotext(1)


def test_a_picture_without_parameters_and_a_damaged_one(writer, saved):
    folder = writer.root / "txt2img-images"
    folder.mkdir(parents=True)
    noise(1).save(folder / "plain.png")
    (folder / "broken.png").write_bytes(png_bytes(noise(2), infotext(2))[:200])  # cut short
    aged(folder / "plain.png", 20), aged(folder / "broken.png", 10)
    assert names(saved.newest_first()) == ["txt2img-images/broken.png", "txt2img-images/plain.png"]
    assert saved.infotext(saved.find("txt2img-images/plain.png")) is None
    with pytest.raises(UserError, match="damaged"):
        saved.open(saved.find("txt2img-images/broken.png"))


def test_symlinks_leading_outside_the_outputs_folder_are_not_listed_nor_opened(tmp_path, writer, saved):
    private = tmp_path / "private"
    private.mkdir()
    secret = private / "secret.png"
    secret.write_bytes(png_bytes(noise(9), "not for the LAN"))
    inside = save(writer, "txt2img", 1, 10)
    folder = inside.parent
    (folder / "linked-secret.png").symlink_to(secret)
    (folder / "linked-folder").symlink_to(private, target_is_directory=True)
    (folder / "alias.png").symlink_to(inside)  # stays inside: listed under its own name
    # Same target, same time: the higher name first.
    assert names(saved.newest_first()) == [f"txt2img-images/{TODAY}/alias.png",
                                           f"txt2img-images/{TODAY}/00000-1.png"]
    assert saved.find(f"txt2img-images/{TODAY}/alias.png").path == inside.resolve()
    for name in (f"txt2img-images/{TODAY}/linked-secret.png", f"txt2img-images/{TODAY}/linked-folder/secret.png",
                 "../private/secret.png", str(secret), f"txt2img-images/{TODAY}/../../../private/secret.png",
                 "", f"txt2img-images/{TODAY}/.tmp-x.png", f"txt2img-images/{TODAY}/notes.txt"):
        with pytest.raises(NotFoundError):
            saved.find(name)


def test_a_default_folder_replaced_by_a_symlink_out_is_not_listed(tmp_path, writer, saved, caplog):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / TODAY).mkdir(parents=True)
    (elsewhere / TODAY / "00000-1.png").write_bytes(png_bytes(noise(1), infotext(1)))
    writer.root.mkdir()
    (writer.root / "txt2img-images").symlink_to(elsewhere, target_is_directory=True)
    save(writer, "img2img", 2, 10)
    assert names(saved.newest_first("txt2img")) == []
    assert "leads outside the outputs folder" in caplog.text
    assert names(saved.newest_first("all")) == [f"img2img-images/{TODAY}/00000-2.png"]


def test_an_outputs_folder_that_is_itself_a_symlink_is_listed(tmp_path, settings):
    real = tmp_path / "big-disk" / "outputs"
    real.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "outputs").symlink_to(real, target_is_directory=True)
    writer = OutputWriter(tmp_path / "data" / "outputs", settings)
    path = writer.save_image(noise(1), "txt2img", 1, infotext(1))
    saved = SavedImages(writer)
    assert names(saved.newest_first()) == [f"txt2img-images/{TODAY}/{path.name}"]
    assert saved.infotext(saved.find(f"txt2img-images/{TODAY}/{path.name}")) == infotext(1)
