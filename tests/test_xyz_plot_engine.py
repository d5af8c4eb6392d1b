"""The X/Y/Z plot script through the engine, on the tiny seeded models at 64x64 (few steps)."""

import numpy as np
import pytest
from PIL import Image

from engine.errors import NotFoundError, RequestError, UserError
from engine.output.infotext import parse
from engine.request import GenerationRequest, ScriptChoice
from tests.support.requests import with_fields

BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=2, width=64, height=64,
                         sampler_name="Euler", seed=4321, save_images=False, save_grid=False)


def plot(**options):
    return BASE.replace(script=ScriptChoice("X/Y/Z plot", options))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def differs_by(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def test_steps_by_cfg_cells_are_the_jobs_run_directly(engine):
    result = engine.generate(plot(x_type="Steps", x_values="1-2", y_type="CFG Scale", y_values="3, 7",
                                  include_lone_images=True))
    assert not result.interrupted
    assert len(result.images) == 4 and result.grid is not None
    # Cells in grid order: X across (steps 1, 2), Y down (CFG 3, 7).
    for image, text, (steps, cfg) in zip(result.images, result.infotexts, [(1, 3), (2, 3), (1, 7), (2, 7)]):
        direct = engine.generate(BASE.replace(steps=steps, cfg_scale=cfg))
        assert differs_by(image, direct.images[0]) <= 2, (steps, cfg)
        params = parse(text)[2]
        assert params["Steps"] == str(steps) and float(params["CFG scale"]) == cfg and params["Seed"] == "4321"
        assert "X Type" not in params  # a cell's infotext is its own job's
    assert result.seeds == [4321] * 4
    # The grid: 2 x 2 cells of 64 px below a legend band and right of another.
    assert result.grid.width > 128 and result.grid.height > 128
    prompt, negative, params = parse(result.grid_text)
    assert (prompt, negative) == ("a red cube", "blurry")
    assert params["Script"] == "X/Y/Z plot"
    assert params["X Type"] == "Steps" and params["X Values"] == "1-2"
    assert params["Y Type"] == "CFG Scale" and params["Y Values"] == "3, 7"
    assert "Z Type" not in params and params["Steps"] == "1"
    assert result.grid_text.rstrip().split(", ")[-1].startswith("Version: ")


def test_without_lone_images_only_the_grid_comes_back(engine):
    result = engine.generate(plot(x_type="Steps", x_values="1,2"))
    assert result.grid is not None and result.images == []
    assert [image for image, _ in result.gallery()] == [result.grid]
    assert result.seeds == [4321]


def test_seed_axis_minus_one_is_fixed_once_and_recorded(engine):
    result = engine.generate(plot(x_type="Seed", x_values="-1, 77", include_lone_images=True)
                             .replace(seed=-1))
    random_seed = result.seeds[0]
    assert random_seed != -1 and result.seeds[1] == 77
    params = parse(result.grid_text)[2]
    assert params["X Values"] == "-1, 77"
    assert params["Fixed X Values"] == f"{random_seed}, 77"
    again = engine.generate(BASE.replace(seed=random_seed))
    assert differs_by(result.images[0], again.images[0]) <= 2


def test_base_seed_is_shared_unless_varied(engine):
    shared = engine.generate(plot(x_type="Steps", x_values="1,1", include_lone_images=True).replace(seed=-1))
    assert shared.seeds[0] == shared.seeds[1] != -1
    varied = engine.generate(plot(x_type="Steps", x_values="1,1", y_type="CFG Scale", y_values="7,7",
                                  vary_seeds_x=True, vary_seeds_y=True, include_lone_images=True))
    assert varied.seeds == [4321, 4322, 4323, 4324]  # seed + ix + iy x (X count)


def test_checkpoint_axis_switches_and_restores_the_checkpoint(engine):
    before = engine.models.current.info.title
    result = engine.generate(plot(x_type="Checkpoint name", x_values="tiny-sd2, tiny-sd1", y_type="Steps",
                                  y_values="1,2", include_lone_images=True))
    assert engine.models.current.info.title == before
    models = [parse(text)[2]["Model"] for text in result.infotexts]
    assert models == ["tiny-sd2", "tiny-sd1", "tiny-sd2", "tiny-sd1"]
    # Only checkpoint names are checked up front, with the choices named.
    with pytest.raises(NotFoundError, match="no-such-model"):
        engine.generate(plot(x_type="Checkpoint name", x_values="no-such-model"))


def test_checkpoint_axis_is_the_outer_loop(engine, monkeypatch):
    loads = []
    original = engine.models.load

    def counting(name, *args, **kwargs):
        loads.append(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(engine.models, "load", counting)
    engine.generate(plot(x_type="Steps", x_values="1,2", y_type="Checkpoint name", y_values="tiny-sd2,tiny-sd1"))
    # tiny-sd2 once for both its cells, tiny-sd1 once, nothing to put back.
    assert len(loads) == 2 and "sd2" in loads[0] and "sd1" in loads[1]


def test_prompt_search_replace_and_its_refusal(engine):
    result = engine.generate(plot(x_type="Prompt S/R", x_values="red, blue", include_lone_images=True))
    assert [parse(text)[0] for text in result.infotexts] == ["a red cube", "a blue cube"]
    with pytest.raises(RequestError, match="Prompt S/R did not find 'green'"):
        engine.submit(plot(x_type="Prompt S/R", x_values="green, blue"))


def test_unsupported_axis_is_refused_by_name(engine):
    with pytest.raises(RequestError, match="'Token merging ratio' is not available"):
        engine.submit(plot(x_type="Token merging ratio", x_values="0.5"))


def test_bad_values_are_refused_before_the_job_is_queued(engine):
    with pytest.raises(NotFoundError, match="unknown sampler 'Eulr'.*Euler a"):
        engine.submit(plot(x_type="Sampler", x_values="Euler, Eulr"))
    with pytest.raises(RequestError, match=r"X axis \(Steps\).*steps must be between 1 and 150"):
        engine.submit(plot(x_type="Steps", x_values="10, 500"))
    with pytest.raises(RequestError, match=r"Y axis \(CFG Scale\): 'high' is not a number"):
        engine.submit(plot(y_type="CFG Scale", y_values="high", x_type="Nothing"))


def test_interrupt_after_the_first_cell_returns_what_was_made(engine, monkeypatch):
    original = engine._run
    runs = []

    def run_then_interrupt(job, request, policy):
        result = original(job, request, policy)
        runs.append(request.steps)
        job.interrupt()
        return result

    monkeypatch.setattr(engine, "_run", run_then_interrupt)
    result = engine.generate(plot(x_type="Steps", x_values="1,2,3", include_lone_images=True))
    assert runs == [1]
    assert result.interrupted and len(result.images) == 1 and result.grid is not None
    # The grid still has three cells: the two not made are blank (black).
    cell = result.grid.crop((result.grid.width - 64, result.grid.height - 64, result.grid.width, result.grid.height))
    assert pixels(cell).max() == 0


def test_img2img_plot_with_denoising_and_settings_axes(engine):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    request = with_fields(BASE, mode="img2img", init_images=(picture,), steps=3, scheduler="Karras",
                          script=ScriptChoice("xyz_plot", {"x_type": "Denoising", "x_values": "0.5, 1.0",
                                                           "y_type": "Schedule rho", "y_values": "3, 12",
                                                           "include_lone_images": True}))
    result = engine.generate(request)
    strengths = [parse(text)[2]["Denoising strength"] for text in result.infotexts]
    assert strengths == ["0.5", "1", "0.5", "1"]
    # rho is a setting: each cell runs with its own, as a job with that override would.
    direct = engine.generate(with_fields(request, script=None, denoising_strength=1.0),
                             overrides={"rho": 3.0})
    assert differs_by(result.images[1], direct.images[0]) <= 2
    assert differs_by(result.images[3], direct.images[0]) > 2


def test_api_style_args_map_axis_indices_per_tab(engine):
    entry = engine.addons.extensions.find_script("x/y/z plot", "img2img")
    options = entry.extension.options_from_args([5, "1, 2", "", 6, "0.5", None], "img2img")
    assert options["x_type"] == "CFG Scale" and options["y_type"] == "Image CFG Scale"
    assert options["x_values_dropdown"] == []
    with pytest.raises(UserError, match="not an axis of txt2img"):
        entry.extension.options_from_args([44], "txt2img")   # past Forge's two flow axes


def test_txt2img_denoising_and_hires_steps_are_the_hires_passes(engine):
    hires = {"hires_fix": {"enabled": True, "scale": 1.0, "upscaler": "Latent"}}
    result = engine.generate(plot(x_type="Denoising", x_values="0.3, 0.6", y_type="Hires steps", y_values="1, 2",
                                  include_lone_images=True).replace(extensions=hires))
    params = [parse(text)[2] for text in result.infotexts]
    assert [(p["Denoising strength"], p["Hires steps"]) for p in params] == \
        [("0.3", "1"), ("0.6", "1"), ("0.3", "2"), ("0.6", "2")]
    direct = engine.generate(BASE.replace(extensions={"hires_fix": {**hires["hires_fix"], "denoising_strength": 0.6,
                                                                    "steps": 2}}))
    assert differs_by(result.images[3], direct.images[0]) <= 2


def test_a_batch_per_cell_puts_its_first_picture_in_the_grid(engine):
    result = engine.generate(plot(x_type="CFG Scale", x_values="3, 7", include_lone_images=True, draw_legend=False)
                             .replace(batch_size=2))
    assert result.grid.size == (128, 64) and len(result.images) == 2
    assert np.array_equal(pixels(result.grid.crop((64, 0, 128, 64))), pixels(result.images[1]))
    assert result.seeds == [4321, 4321]
