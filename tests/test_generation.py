"""txt2img through the engine, end to end on a tiny seeded model at 64x64."""

import threading

import numpy as np
import pytest
from PIL import Image

from engine.sampling import samplers
from engine.output.infotext import parse
from engine.request import GenerationRequest

BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=3, width=64,
                         height=64, sampler_name="Euler", save_images=False, save_grid=False)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_generates_images_with_infotext_and_saves_them(engine):
    request = BASE.replace(seed=1234, save_images=True, save_grid=True, batch_size=2)
    result = engine.generate(request)
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert result.seeds == [1234, 1235]
    prompt, negative, params = parse(result.infotexts[1])
    assert (prompt, negative) == ("a red cube", "blurry")
    assert params["Seed"] == "1235" and params["Steps"] == "3" and params["Sampler"] == "Euler"
    assert params["Size"] == "64x64" and params["Model"] == "tiny-sd1"
    assert params["Model hash"] == engine.models.current.info.short_hash
    saved = Image.open(result.paths[1])
    assert saved.info["parameters"] == result.infotexts[1]
    assert result.paths[1].name.endswith("-1235.png")
    assert np.array_equal(pixels(saved), pixels(result.images[1]))
    assert result.grid_path is not None and result.grid_path.name.startswith("grid-")


def test_single_image_makes_no_grid(engine):
    result = engine.generate(BASE.replace(seed=5, save_images=True, save_grid=True))
    assert result.grid is None and result.grid_path is None


def test_same_seed_gives_identical_bytes(engine):
    first = engine.generate(BASE.replace(seed=77, sampler_name="Euler a"))
    second = engine.generate(BASE.replace(seed=77, sampler_name="Euler a"))
    assert first.images[0].tobytes() == second.images[0].tobytes()
    other = engine.generate(BASE.replace(seed=78, sampler_name="Euler a"))
    assert first.images[0].tobytes() != other.images[0].tobytes()


def test_image_i_of_a_job_uses_seed_plus_i(engine):
    batch = engine.generate(BASE.replace(seed=500, batch_size=2, n_iter=2, sampler_name="Euler a"))
    assert batch.seeds == [500, 501, 502, 503]
    for index in (1, 3):
        alone = engine.generate(BASE.replace(seed=500 + index, sampler_name="Euler a"))
        difference = np.abs(pixels(batch.images[index]) - pixels(alone.images[0])).max()
        assert difference <= 2, f"image {index} differs from seed {500 + index} alone by {difference}"


def test_random_seed_is_reported(engine):
    result = engine.generate(BASE.replace(seed=-1))
    assert 0 <= result.seeds[0] < 2**32
    assert parse(result.infotexts[0])[2]["Seed"] == str(result.seeds[0])
    again = engine.generate(BASE.replace(seed=result.seeds[0]))
    assert again.images[0].tobytes() == result.images[0].tobytes()


def test_variation_seed_blends_between_two_seeds(engine):
    base = engine.generate(BASE.replace(seed=10))
    target = engine.generate(BASE.replace(seed=20))
    none = engine.generate(BASE.replace(seed=10, subseed=20, subseed_strength=0.0))
    full = engine.generate(BASE.replace(seed=10, subseed=20, subseed_strength=1.0))
    half = engine.generate(BASE.replace(seed=10, subseed=20, subseed_strength=0.5))
    assert none.images[0].tobytes() == base.images[0].tobytes()
    assert np.abs(pixels(full.images[0]) - pixels(target.images[0])).max() <= 1
    assert half.images[0].tobytes() not in (base.images[0].tobytes(), target.images[0].tobytes())
    params = parse(half.infotexts[0])[2]
    assert params["Variation seed"] == "20" and params["Variation seed strength"] == "0.5"


def test_with_variation_strength_the_variation_seed_increments(engine):
    result = engine.generate(BASE.replace(seed=10, subseed=20, subseed_strength=0.3, batch_size=2))
    assert result.seeds == [10, 10] and result.subseeds == [20, 21]
    assert result.images[0].tobytes() != result.images[1].tobytes()


def test_seed_resize_keeps_the_centre_of_the_noise(engine):
    result = engine.generate(BASE.replace(seed=3, width=128, seed_resize_from_w=64,
                                          seed_resize_from_h=64))
    assert result.images[0].size == (128, 64)
    assert parse(result.infotexts[0])[2]["Seed resize from"] == "64x64"


@pytest.mark.parametrize("name", samplers.sampler_names())
def test_every_sampler_runs_and_names_its_schedule_as_a1111(engine, name):
    """Every sampler makes a picture under its own schedule and under Karras; the infotext names the
    schedule type as A1111 does (the sampler's own default under Automatic, none where that is
    the model's own or for the timestep samplers, which have no schedule type). The numbers
    themselves are checked against k-diffusion in test_a1111_sampling_reference.py."""
    sampler = samplers.resolve(name)[0]
    images = {}
    for schedule in ("Automatic", "Karras"):
        result = engine.generate(BASE.replace(seed=1, steps=3, sampler_name=name, scheduler=schedule))
        array = pixels(result.images[0])
        assert array.shape == (64, 64, 3) and array.std() > 0, f"{name}/{schedule} made a flat image"
        written = parse(result.infotexts[0])[2].get("Schedule type")
        if sampler.kind == samplers.TIMESTEPS:
            assert written is None
        elif schedule == "Automatic":
            assert written == sampler.default_schedule
        else:
            assert written == "Karras"
        images[schedule] = result.images[0].tobytes()
    # DPM fast and adaptive choose their own steps between the model's sigma range (as in A1111).
    own_steps = sampler.function in ("sample_dpm_fast", "sample_dpm_adaptive")
    if sampler.kind != samplers.TIMESTEPS and sampler.default_schedule != "Karras" and not own_steps:
        assert images["Automatic"] != images["Karras"], "the schedule type made no difference"


def test_progress_counts_sampling_steps(engine):
    job = engine.submit(BASE.replace(seed=1, steps=3, sampler_name="Heun"))
    job.outcome()
    assert job.total_steps == 3  # as A1111 counts them: steps, whatever the model calls per step
    assert job.step == job.total_steps


def test_live_previews_are_made_every_n_steps(engine):
    before = engine.settings["show_progress_every_n_steps"]
    engine.settings.update({"show_progress_every_n_steps": 2})
    try:
        job = engine.submit(BASE.replace(seed=1, steps=4))
        job.outcome()
    finally:  # the session engine: put back what was there, whatever happened
        engine.settings.update({"show_progress_every_n_steps": before})
    assert job.preview_id == 2 and job.preview.size == (8, 8)


def _stop_when(job, step: int, action) -> threading.Thread:
    def watch():
        while not job.done and job.step < step:
            job.wait(0.005)
        action()
    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def test_interrupt_stops_early_and_returns_what_it_has(engine):
    job = engine.submit(BASE.replace(seed=1, steps=60, n_iter=3))
    watcher = _stop_when(job, 3, job.interrupt)
    result = job.outcome()
    watcher.join()
    assert result.interrupted
    assert len(result.images) == 1, "later batches must not start after an interrupt"
    assert job.step < 60


def test_skip_moves_on_to_the_next_batch(engine):
    job = engine.submit(BASE.replace(seed=1, steps=60, n_iter=2))
    watcher = _stop_when(job, 3, job.skip)
    result = job.outcome()
    watcher.join()
    assert not result.interrupted
    assert len(result.images) == 2 and result.seeds == [1, 2]
    full = engine.generate(BASE.replace(seed=2, steps=60))
    assert result.images[1].tobytes() == full.images[0].tobytes(), "the second image ran fully"


def test_a_long_prompt_is_not_truncated(engine):
    words = " ".join(f"w{i}" for i in range(120))
    short = engine.generate(BASE.replace(seed=9, prompt=words.rsplit(" ", 40)[0]))
    long = engine.generate(BASE.replace(seed=9, prompt=words))
    assert short.images[0].tobytes() != long.images[0].tobytes()
