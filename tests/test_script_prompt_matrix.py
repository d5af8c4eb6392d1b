"""The Prompt matrix script (extensions/prompt_matrix) through the engine, on tiny-sd1 at 64x64,
and the grid legend's on/off parts it draws with."""

import numpy as np
import pytest
from PIL import Image

from engine.errors import RequestError
from engine.output.grids import OFF_COLOUR, labelled_grid
from engine.output.infotext import parse
from engine.request import GenerationRequest, ScriptChoice
from extensions.prompt_matrix import grid_layout, matrix_prompts
from extensions.prompt_matrix import script as prompt_matrix

BASE = GenerationRequest(prompt="a house | at night | in snow", negative_prompt="blurry", steps=2, width=64,
                         height=64, sampler_name="Euler", seed=7, save_images=False, save_grid=False)


def matrix(engine, **options):
    return engine.generate(BASE.replace(script=ScriptChoice("Prompt matrix", options)))


def test_every_combination_of_the_optional_parts_in_bit_order():
    assert matrix_prompts("a house | at night | in snow") == [
        "a house ", "a house , at night", "a house , in snow", "a house , at night, in snow"]
    assert matrix_prompts("a | b,| c", put_at_start=True, delimiter="space") == ["a ", "b a ", "c a ", "b c a "]
    assert matrix_prompts("no parts") == ["no parts"]
    assert len(matrix_prompts("a|b|c|d|e")) == 16


def test_the_grid_puts_the_first_half_of_the_parts_across_and_the_rest_down():
    rows, across, down = grid_layout("base | p1 | p2 | p3")
    assert rows == 2 and len(across) == 4 and len(down) == 2  # 2^ceil(3/2) columns, 2^floor(3/2) rows
    assert across[1] == [("p1", True), ("p2", False)] and across[2] == [("p1", False), ("p2", True)]
    assert down == [[("p3", False)], [("p3", True)]]
    assert grid_layout("just one")[0] == 1


def test_one_job_per_combination_each_with_its_own_prompt_and_the_same_seed(engine):
    result = matrix(engine)
    assert len(result.images) == 4
    prompts = [parse(text)[0] for text in result.infotexts]
    assert prompts == matrix_prompts(BASE.prompt)
    assert {parse(text)[2]["Seed"] for text in result.infotexts} == {"7"}
    assert all(parse(text)[1] == "blurry" for text in result.infotexts)
    # The grid comes first in the gallery, its cells the pictures in order: 2 columns x 2 rows,
    # the last picture in the bottom-right corner after the legend bands.
    gallery = result.gallery()
    assert gallery[0][0] is result.grid and len(gallery) == 5
    grid = result.grid
    assert grid.width > 128 and grid.height > 128
    corner = grid.crop((grid.width - 64, grid.height - 64, grid.width, grid.height))
    assert np.array_equal(np.asarray(corner), np.asarray(result.images[3].convert("RGB")))
    # The same prompt and seed without the script: the same picture.
    alone = engine.generate(BASE.replace(prompt=prompts[3]))
    assert alone.images[0].tobytes() == result.images[3].tobytes()


def test_random_seeds_and_margins_and_the_negative_prompt(engine):
    result = matrix(engine, different_seeds=True, prompt_type="negative", margin_size=6,
                    variations_delimiter="space")
    assert [parse(text)[2]["Seed"] for text in result.infotexts] == ["7"]  # the negative has no |
    result = engine.generate(BASE.replace(prompt="a cat", negative_prompt="ugly | dark | noisy",
                                          script=ScriptChoice("prompt_matrix", {
                                              "different_seeds": True, "prompt_type": "negative",
                                              "margin_size": 6, "put_at_start": True})))
    assert [parse(text)[2]["Seed"] for text in result.infotexts] == ["7", "8", "9", "10"]
    assert [parse(text)[1] for text in result.infotexts] == ["ugly ", "dark, ugly ", "noisy, ugly ",
                                                             "dark, noisy, ugly "]
    assert all(parse(text)[0] == "a cat" for text in result.infotexts)
    grid = result.grid
    # A 6-pixel margin between the cells: the first picture sits 2 cells and a margin from the corner.
    first = grid.crop((grid.width - 134, grid.height - 134, grid.width - 70, grid.height - 70))
    assert np.array_equal(np.asarray(first), np.asarray(result.images[0].convert("RGB")))
    gap = np.asarray(grid.crop((grid.width - 70, grid.height - 64, grid.width - 64, grid.height)))
    assert (gap == 255).all()


def test_script_args_come_in_the_mature_apis_order():
    options = prompt_matrix.options_from_args([True, True, "negative", "space", 10], "txt2img")
    assert options == {"put_at_start": True, "different_seeds": True, "prompt_type": "negative",
                       "variations_delimiter": "space", "margin_size": 10}


def test_too_many_parts_and_a_bad_prompt_type_are_refused(engine):
    with pytest.raises(RequestError, match="too many"):
        engine.generate(BASE.replace(prompt="a" + "|x" * 11, script=ScriptChoice("Prompt matrix")))
    with pytest.raises(RequestError, match="Prompt type"):
        matrix(engine, prompt_type="both")


def test_legend_parts_that_are_off_are_grey_and_struck_through():
    cells = [Image.new("RGB", (64, 64), (0, 0, 255))] * 2
    grid = np.asarray(labelled_grid(cells, 1, [[("sunny", False)], [("sunny", True)]], []))
    band = grid[:grid.shape[0] - 64].min(-1)  # the legend band, darkest channel of each pixel
    off, on = band[:, :64], band[:, 64:]
    assert (on < 60).sum() > 5                    # black text (anti-aliased at its edges)
    assert off.min() >= OFF_COLOUR[0] - 2 and (off < 200).sum() > 20  # grey only, none darker
    # The strike: one row of the off label is grey across nearly the text's whole width.
    text_width = (on < 200).any(0).sum()
    assert (off < 200).sum(1).max() >= text_width * 0.8
