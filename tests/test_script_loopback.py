"""The Loopback script (extensions/loopback) through the engine, on tiny-sd1 at 64x64."""

import math

import numpy as np
import pytest

from engine.errors import RequestError
from engine.output.infotext import parse
from engine.request import GenerationRequest, ScriptChoice
from extensions.loopback import script as loopback
from extensions.loopback import strength_for_loop
from tests.test_img2img import noise_image
from tests.support.requests import img2img_request, with_fields

PICTURE = noise_image(seed=4)
BASE = img2img_request(prompt="a pond", steps=4, width=64, height=64, sampler_name="Euler",
                       seed=11, denoising_strength=0.8, init_images=(PICTURE,), save_images=False,
                       save_grid=False)


def loop(engine, request=BASE, **options):
    return engine.generate(request.replace(script=ScriptChoice("Loopback", options)))


def strengths(result):
    return [float(parse(text)[2]["Denoising strength"]) for text in result.infotexts]


def test_the_curves_as_the_mature_ui_computes_them():
    assert strength_for_loop(0, 5, 0.8, 0.4, "Linear") == 0.8
    assert strength_for_loop(2, 5, 0.8, 0.4, "Linear") == pytest.approx(0.6)
    assert strength_for_loop(1, 3, 0.8, 0.4, "Aggressive") == pytest.approx(0.8 - 0.4 * math.sin(math.pi / 4))
    assert strength_for_loop(1, 3, 0.8, 0.4, "Lazy") == pytest.approx(0.8 - 0.4 * (1 - math.cos(math.pi / 4)))
    assert strength_for_loop(4, 5, 0.8, 0.4, "Lazy") == pytest.approx(0.4)
    assert strength_for_loop(1, 1, 0.8, 0.4, "Linear") == 0.8  # one loop keeps the tab's strength


def test_each_loop_starts_from_the_last_with_the_curves_strength_and_the_next_seed(engine):
    result = loop(engine, loops=3, final_denoising_strength=0.5, denoising_curve="Aggressive")
    assert len(result.images) == 3
    assert strengths(result) == pytest.approx([strength_for_loop(i, 3, 0.8, 0.5, "Aggressive") for i in range(3)])
    assert [parse(text)[2]["Seed"] for text in result.infotexts] == ["11", "12", "13"]
    # Loop 2 is img2img of loop 1's picture, with loop 2's seed and strength.
    second = engine.generate(with_fields(BASE, init_images=(result.images[0],), seed=12,
                                         denoising_strength=strengths(result)[1]))
    assert second.images[0].tobytes() == result.images[1].tobytes()
    first = engine.generate(BASE)
    assert first.images[0].tobytes() == result.images[0].tobytes()
    # The grid: the loops in one row.
    assert result.grid.size == (192, 64)
    assert np.array_equal(np.asarray(result.grid.crop((128, 0, 192, 64))), np.asarray(result.images[2]))


def test_batch_count_runs_whole_chains_and_keeps_the_last_picture_of_each(engine):
    result = loop(engine, BASE.replace(n_iter=2, batch_size=3), loops=2, final_denoising_strength=0.6,
                  denoising_curve="Linear")
    assert len(result.images) == 2 and result.grid.size == (128, 64)
    # Each chain's last loop at the final strength; the seeds run on across the chains.
    assert strengths(result) == pytest.approx([0.6, 0.6])
    assert [parse(text)[2]["Seed"] for text in result.infotexts] == ["12", "14"]
    assert all(image.size == (64, 64) for image in result.images)


def test_clip_appends_a_caption_of_each_loops_input(engine, monkeypatch):
    seen = []

    def caption(image):
        seen.append(image.tobytes())
        return f"caption {len(seen)}"

    monkeypatch.setattr(engine.captioner, "caption_here", caption)
    result = loop(engine, loops=2, append_interrogation="CLIP")
    assert [parse(text)[0] for text in result.infotexts] == ["a pond, caption 1", "a pond, caption 2"]
    assert seen == [PICTURE.tobytes(), result.images[0].tobytes()]
    empty = loop(engine, BASE.replace(prompt=""), loops=1, append_interrogation="CLIP")
    assert parse(empty.infotexts[0])[0] == "caption 3"


def test_deepbooru_and_txt2img_are_refused(engine):
    with pytest.raises(RequestError, match="DeepBooru interrogation is not supported"):
        loop(engine, append_interrogation="DeepBooru")
    with pytest.raises(RequestError, match="must be one of"):
        loop(engine, append_interrogation="BLIP-2")
    with pytest.raises(RequestError, match="does not work in txt2img"):
        engine.generate(GenerationRequest(prompt="x", steps=2, width=64, height=64, script=ScriptChoice("Loopback")))


def test_script_args_come_in_the_mature_apis_order():
    assert loopback.options_from_args([8, 0.3, "Lazy", "CLIP"], "img2img") == {
        "loops": 8, "final_denoising_strength": 0.3, "denoising_curve": "Lazy", "append_interrogation": "CLIP"}
