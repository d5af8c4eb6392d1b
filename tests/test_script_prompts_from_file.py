"""The Prompts from file or textbox script (extensions/prompts_from_file) through the engine, on
tiny-sd1 at 64x64: each line's options reach its job, bad lines are refused before anything
runs, and the seed options."""

import pytest

from engine.errors import RequestError
from engine.output.infotext import parse
from engine.request import GenerationRequest, ScriptChoice
from extensions.prompts_from_file import line_options, line_request
from extensions.prompts_from_file import script as from_file

BASE = GenerationRequest(prompt="", steps=2, width=64, height=64, sampler_name="Euler", seed=40,
                         save_images=False, save_grid=False)


def run_lines(engine, text, request=BASE, **options):
    return engine.generate(request.replace(script=ScriptChoice("Prompts from file or textbox",
                                                               {"prompt_txt": text, **options})))


def params(result):
    return [parse(text) for text in result.infotexts]


def test_lines_are_read_as_the_mature_ui_reads_them():
    assert line_options("a cat -- on a mat") == {"prompt": "a cat -- on a mat"}  # not an option line
    options = line_options('--prompt a red "big house" --steps 10 --cfg_scale 6.5 '
                           "--sampler_name 'Euler a' --negative_prompt 'dark, blurry' --tiling true")
    assert options == {"prompt": "a red big house", "steps": 10, "cfg_scale": 6.5, "sampler_name": "Euler a",
                       "negative_prompt": "dark, blurry", "tiling": True}
    request = line_request(BASE.replace(prompt="tab"), {"prompt": "line", "do_not_save_samples": True,
                                                        "styles": "one, two", "sampler_index": 1},
                           "end", ["Euler", "Euler a"])
    assert (request.prompt, request.save_images, request.styles, request.sampler_name) == \
        ("tab line", False, ("one", "two"), "Euler a")


def test_each_line_is_a_job_with_its_own_options(engine):
    text = "\n".join([
        "a lighthouse",
        "",
        '--prompt "a red barn" --steps 3 --seed 5 --cfg_scale 4 --negative_prompt "fog"',
        "--prompt a green field --width 128 --height 64 --n_iter 2 --seed 9 --sampler_name 'euler a'",
    ])
    result = run_lines(engine, text)
    assert len(result.images) == 4 and result.grid is None  # no grid, as the mature UI returns
    (p1, _, a), (p2, n2, b), (p3, _, c), (_, _, d) = params(result)
    assert (p1, a["Seed"], a["Steps"]) == ("a lighthouse", "40", "2")
    assert (p2, n2, b["Seed"], b["Steps"], b["CFG scale"]) == ("a red barn", "fog", "5", "3", "4")
    assert (p3, c["Seed"], d["Seed"], c["Size"], c["Sampler"]) == ("a green field", "9", "10", "128x64", "Euler a")
    assert result.images[2].size == (128, 64)


def test_line_prompts_go_before_or_after_the_tabs_prompt(engine):
    tab = BASE.replace(prompt="oil painting", negative_prompt="ugly")
    start = run_lines(engine, "a boat\n--prompt a cart --negative_prompt dark", tab)
    assert [(p, n) for p, n, _ in params(start)] == [("a boat oil painting", "ugly"),
                                                     ("a cart oil painting", "dark ugly")]
    end = run_lines(engine, "a boat", tab, prompt_position="end")
    assert params(end)[0][0] == "oil painting a boat"


def test_iterate_seed_moves_each_line_on_by_its_pictures(engine):
    request = BASE.replace(n_iter=2)
    result = run_lines(engine, "one\ntwo\n--prompt three --seed 3\nfour", request, checkbox_iterate=True)
    assert [p["Seed"] for _, _, p in params(result)] == ["40", "41", "42", "43", "3", "4", "46", "47"]
    plain = run_lines(engine, "one\ntwo", request)
    assert [p["Seed"] for _, _, p in params(plain)] == ["40", "41", "40", "41"]


def test_one_random_seed_for_every_line_or_one_each(engine):
    same = run_lines(engine, "one\ntwo\nthree", BASE.replace(seed=-1), checkbox_iterate_batch=True)
    assert len({p["Seed"] for _, _, p in params(same)}) == 1
    each = run_lines(engine, "one\ntwo\nthree", BASE.replace(seed=-1))
    assert len({p["Seed"] for _, _, p in params(each)}) == 3
    moving = [int(p["Seed"]) for _, _, p in params(run_lines(engine, "one\ntwo\nthree", BASE.replace(seed=-1),
                                                             checkbox_iterate=True))]
    assert moving[1] == moving[0] + 1 and moving[2] == moving[0] + 2


@pytest.mark.parametrize("text, words", [
    ("fine\n--prompt x --clip_skip 2", "line 2: unknown option --clip_skip"),
    ("--prompt x --steps many", "line 1: option --steps: invalid literal"),
    ("--prompt 'x", "line 1: No closing quotation"),
    ("--prompt x --steps", "line 1: option --steps needs a value"),
    ("--outpath_samples /tmp/x", "--outpath_samples is not supported here"),
    ("--prompt x --steps 900", "line 1: steps must be between"),
    ("--prompt x --sampler_name Nonesuch", "line 1: Sampler not found"),
    ("--prompt x --sd_model no-such-model", "line 1"),
    ("--prompt x --sampler_index 999", "--sampler_index 999 is not a sampler's number"),
    ("--prompt x --tiling perhaps", "expected true or false"),
    ("\n  \n", "the list of prompts is empty"),
])
def test_bad_lines_are_refused_before_any_job_runs(engine, text, words):
    with pytest.raises(RequestError) as refused:
        run_lines(engine, text)
    assert words in refused.value.message


def test_a_line_may_switch_checkpoints_for_itself_only(engine):
    result = run_lines(engine, "--prompt a --sd_model tiny-sd2\n--prompt b")
    assert [p["Model"] for _, _, p in params(result)] == ["tiny-sd2", "tiny-sd1"]
    assert engine.models.current.info.model_name == "tiny-sd1"


def test_script_args_in_the_current_and_the_older_order():
    assert from_file.options_from_args([True, False, "end", "a\nb"], "txt2img") == {
        "checkbox_iterate": True, "checkbox_iterate_batch": False, "prompt_position": "end", "prompt_txt": "a\nb"}
    assert from_file.options_from_args([False, True, "a\nb"], "img2img") == {
        "checkbox_iterate": False, "checkbox_iterate_batch": True, "prompt_txt": "a\nb"}
