"""Gradio's picture cache is written once per content, atomically: a picture sent to the page
again (Send to img2img, inpaint, extras in a row; a preview equal to the result) is never
rewritten while the browser is still fetching it. The walk through every tab found the server
failing on such a fetch ("Too much data for declared Content-Length")."""

import os
import threading
from pathlib import Path

import gradio as gr
from gradio import processing_utils
from PIL import Image

from ui import gradio_cache


def picture() -> Image.Image:
    return Image.effect_noise((256, 256), 60).convert("RGB")


def test_a_picture_sent_again_is_not_rewritten(tmp_path):
    gradio_cache.install()
    image = picture()
    first = processing_utils.save_pil_to_cache(image, str(tmp_path), format="png")
    before = os.stat(first)
    second = processing_utils.save_pil_to_cache(image, str(tmp_path), format="png")
    after = os.stat(second)
    assert first == second
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert Image.open(first).tobytes() == image.tobytes()
    # Another picture goes to its own file; no temporary files are left behind.
    other = processing_utils.save_pil_to_cache(Image.new("RGB", (8, 8), "red"), str(tmp_path), format="png")
    assert other != first
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(gradio_cache.TEMP_PREFIX)]


def test_a_half_written_file_left_by_a_crash_is_replaced(tmp_path):
    gradio_cache.install()
    image = picture()
    path = processing_utils.save_pil_to_cache(image, str(tmp_path), format="png")
    whole = Path(path).read_bytes()
    Path(path).write_bytes(whole[:100])
    assert processing_utils.save_pil_to_cache(image, str(tmp_path), format="png") == path
    assert Path(path).read_bytes() == whole


def test_readers_never_see_a_partial_picture_while_it_is_sent_again(tmp_path):
    gradio_cache.install()
    image = picture()
    gallery = gr.Gallery(format="png")
    path = gallery.postprocess([image]).root[0].image.path  # the components go through it too
    size = os.path.getsize(path)
    stop = threading.Event()

    def send_again():
        while not stop.is_set():
            gallery.postprocess([image])
            processing_utils.save_pil_to_cache(image, os.path.dirname(os.path.dirname(path)), format="png")

    sender = threading.Thread(target=send_again)
    sender.start()
    try:
        torn = []
        for _ in range(2000):
            declared = os.stat(path).st_size
            with open(path, "rb") as handle:
                read = len(handle.read())
            if not declared == read == size:
                torn.append((declared, read))
    finally:
        stop.set()
        sender.join()
    assert torn == []


def test_bytes_saved_to_the_cache_keep_their_name(tmp_path):
    gradio_cache.install()
    path = processing_utils.save_bytes_to_cache(b"RIFF....WAVEfmt ", "sound.wav", str(tmp_path))
    assert path.endswith("sound.wav") and Path(path).read_bytes() == b"RIFF....WAVEfmt "
    assert processing_utils.save_bytes_to_cache(b"RIFF....WAVEfmt ", "sound.wav", str(tmp_path)) == path
