"""The X/Y/Z plot script's parts without a model: value syntax, the axis table and its API
indices, option reading, loop order, infotext keys and the grids' layout (with a stand-in host)."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from engine.errors import NotFoundError, RequestError
from engine.output.grids import labelled_grid
from engine.output.infotext import parse
from engine.request import GenerationRequest
from extensions.xyz_plot import FIELD_NAMES, XyzPlot
from extensions.xyz_plot.axes import AXES, CellJob, axes_for, find_axis, labels_for, reorder_prompt
from extensions.xyz_plot.plot import (
    cell_job,
    loop_order,
    read_plot,
    run_plot,
    with_params,
)
from extensions.xyz_plot.values import expand, expand_float, expand_int, join_list, split_list
from tests.support.requests import with_fields

# A1111 1.10.1's axis list in order (shared/COMPAT.md), with the tab each is limited to.
A1111_AXES = [
    ("Nothing", None), ("Seed", None), ("Var. seed", None), ("Var. strength", None), ("Steps", None),
    ("Hires steps", "txt2img"), ("CFG Scale", None), ("Image CFG Scale", "img2img"), ("Prompt S/R", None),
    ("Prompt order", None), ("Sampler", "txt2img"), ("Hires sampler", "txt2img"), ("Sampler", "img2img"),
    ("Checkpoint name", None), ("Negative Guidance minimum sigma", None), ("Sigma Churn", None),
    ("Sigma min", None), ("Sigma max", None), ("Sigma noise", None), ("Schedule type", None),
    ("Schedule min sigma", None), ("Schedule max sigma", None), ("Schedule rho", None),
    ("Beta schedule alpha", None), ("Beta schedule beta", None), ("Eta", None), ("Clip skip", None),
    ("Denoising", None), ("Initial noise multiplier", None), ("Extra noise", None),
    ("Hires upscaler", "txt2img"), ("Cond. Image Mask Weight", "img2img"), ("VAE", None), ("Styles", None),
    ("UniPC Order", None), ("Face restore", None), ("Token merging ratio", None),
    ("Token merging ratio high-res", None), ("Always discard next-to-last sigma", None),
    ("SGM noise multiplier", None), ("Refiner checkpoint", None), ("Refiner switch at", None),
    ("RNG source", None), ("FP8 mode", None), ("Size", None),
]
# Forge's axes for the flow families, after A1111's so that its indexes stay.
FORGE_AXES = [("Distilled CFG Scale", None), ("Shift", None)]

BASE = GenerationRequest(prompt="a red cube, blue sky, green grass", negative_prompt="blurry", steps=4,
                         width=64, height=64, sampler_name="Euler", seed=100)


class Catalog:
    def checkpoint_titles(self):
        return ["alpha.safetensors [abc]", "beta.safetensors [def]"]

    def find_checkpoint(self, name):
        for title in self.checkpoint_titles():
            if title.startswith(name):
                return title
        raise NotFoundError(f"Checkpoint not found: '{name}'. Available: {', '.join(self.checkpoint_titles())}")

    def vae_names(self):
        return ["Automatic", "None", "clear.safetensors"]

    def style_names(self):
        return ["Photo", "Sketch"]

    def sampler_names(self):
        return ["Euler a", "Euler", "DPM++ 2M"]

    def schedule_types(self):
        return ["Automatic", "Karras", "Exponential"]

    def upscaler_names(self):
        return ["None", "Lanczos", "Nearest", "4x-Tiny"]

    def check_upscaler(self, name, field="script_args"):
        raise NotFoundError(f"Upscaler not found: '{name}'")

    def check_face_restorer(self, name):
        if name == "GFPGAN":
            raise RequestError("Face restorer 'GFPGAN' is not available: no weights")

    def latent_upscale_modes(self):
        return ["Latent", "Latent (nearest)"]

    def face_restorers(self):
        return ["Face detailer", "GFPGAN", "CodeFormer"]


CATALOG = Catalog()


def options(**given):
    values = {f.name: f.default for f in XyzPlot().fields_for("txt2img")}
    values.update(given)
    return values


def plot_of(request=BASE, mode="txt2img", **given):
    return read_plot(request.replace(mode=mode), options(**given), mode, CATALOG)


# Value syntax -----------------------------------------------------------------------------------

def test_lists_are_csv_with_quotes_spaces_and_lines():
    assert split_list('a, "b, c" ,d') == ["a", "b, c", "d"]
    assert split_list("1,2\n3") == ["1", "2", "3"]
    assert split_list("") == []
    assert join_list(["a", "b, c"]) == 'a,"b, c"'


def test_whole_number_ranges_as_a1111():
    assert expand_int("1-5") == [1, 2, 3, 4, 5]
    assert expand_int(" 1 - 10 (+2) ") == [1, 3, 5, 7, 9]
    assert expand_int("10-1 (-3)") == [10, 7, 4]  # counting down stops before the end, as A1111
    assert expand_int("10-5 (-3)") == [10, 7]
    assert expand_int("1-10 [5]") == [1, 3, 5, 7, 10]
    assert expand_int("-5--2") == [-5, -4, -3, -2]
    assert expand_int("7") == [7] and expand_int("-1") == [-1]
    assert expand_int("5-1") == []  # no step: nothing, as A1111


def test_decimal_ranges_as_a1111():
    assert expand_float("1-3 (+0.5)") == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert expand_float("0.0-1.0 [6]") == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert expand_float("1-0 (-0.25)") == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert expand_float("5.5") == [5.5] and expand_float("1e-3") == [0.001]
    assert expand("float", ["3", "", "7.5"]) == [3.0, 7.5]  # blanks skipped on number axes


def test_permutations_and_text():
    assert expand("permutations", ["a", "b", "c"]) == [
        ("a", "b", "c"), ("a", "c", "b"), ("b", "a", "c"), ("b", "c", "a"), ("c", "a", "b"), ("c", "b", "a")]
    assert expand("permutations", []) == []
    assert expand("text", ["x", ""]) == ["x", ""]  # an empty replacement is a value


@pytest.mark.parametrize("text, message", [
    ("abc", "'abc' is not a whole number or a range"),
    ("5.5", "'5.5' is not a whole number"),
    ("1-10 (+0)", "step of a range cannot be 0"),
    ("1-100000", "makes 100000 values; an axis takes at most 1000"),
    ("1-10 [5000]", "makes 5000 values"),
])
def test_bad_whole_numbers_are_named(text, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace("+", r"\+")):
        expand_int(text)


def test_bad_decimals_and_too_many_tokens_are_named():
    with pytest.raises(RequestError, match="'high' is not a number"):
        expand_float("high")
    with pytest.raises(RequestError, match="not a finite number"):
        expand_float("inf")
    with pytest.raises(RequestError, match="at most 6 values"):
        expand("permutations", list("abcdefg"))
    with pytest.raises(RequestError, match="values are too long: 20001 characters"):
        split_list("1" * 20_001)


# The axis table and the API's indices -------------------------------------------------------------

def test_axis_table_is_a1111s_list_in_order():
    assert [(axis.label, None if len(axis.modes) == 2 else axis.modes[0]) for axis in AXES] == A1111_AXES + FORGE_AXES


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_each_tab_indexes_its_filtered_list(mode):
    expected = [label for label, only in A1111_AXES + FORGE_AXES if only in (None, mode)]
    assert list(labels_for(mode)) == expected
    for index, label in enumerate(expected):
        assert find_axis(mode, index).label == label
    assert len(set(expected)) == len(expected)  # within a tab, labels name one axis each


def test_known_indices():
    assert find_axis("txt2img", 4).label == "Steps" and find_axis("txt2img", 6).label == "CFG Scale"
    assert find_axis("txt2img", 9).label == "Sampler" and find_axis("txt2img", 41).label == "Size"
    assert find_axis("img2img", 5).label == "CFG Scale" and find_axis("img2img", 6).label == "Image CFG Scale"
    assert find_axis("img2img", 9).label == "Sampler" and find_axis("img2img", 27).label == "Cond. Image Mask Weight"
    assert find_axis("img2img", "4").label == "Steps" and find_axis("img2img", "cfg scale").label == "CFG Scale"
    assert find_axis("txt2img", 42).label == "Distilled CFG Scale" and find_axis("txt2img", 43).label == "Shift"
    with pytest.raises(RequestError, match="X type 44 is not an axis of txt2img"):
        find_axis("txt2img", 44)
    with pytest.raises(NotFoundError, match="unknown Y type 'Hires steps' for img2img"):
        find_axis("img2img", "Hires steps", "Y")


def test_script_args_in_a1111_order():
    script = XyzPlot()
    assert [f.name for f in script.fields_for("img2img")] == list(FIELD_NAMES)
    assert len(FIELD_NAMES) == 18
    args = [4, "10, 20", "", 9, "", ["Euler", "DPM++ 2M"], 0, "", None,
            "true", False, True, "false", 1, 0, False, 4, False]
    opts = script.options_from_args(args, "txt2img")
    assert opts["x_type"] == "Steps" and opts["y_type"] == "Sampler" and opts["z_type"] == "Nothing"
    assert opts["x_values_dropdown"] == [] and opts["y_values_dropdown"] == ["Euler", "DPM++ 2M"]
    assert "z_values_dropdown" not in opts
    assert opts["draw_legend"] is True and opts["no_fixed_seeds"] is False and opts["vary_seeds_x"] is True
    assert opts["margin_size"] == 4
    # The same index is another axis in img2img (no Hires steps there).
    assert script.options_from_args([5], "img2img")["x_type"] == "CFG Scale"
    assert script.options_from_args([5], "txt2img")["x_type"] == "Hires steps"
    # Clients written before vary_seeds_x/y/z send 15 values, margin size 14th.
    old = script.options_from_args([4, "1,2", "", 0, "", "", 0, "", "", True, False, False, False, 8, False],
                                   "txt2img")
    assert old["margin_size"] == 8 and "vary_seeds_x" not in old
    with pytest.raises(RequestError, match="at most 18 values"):
        script.options_from_args([0] * 19, "txt2img")


def test_description_names_what_is_refused():
    for label in ("Cond. Image Mask Weight", "Token merging ratio", "FP8 mode"):
        assert label in XyzPlot.description


# Reading a plot -------------------------------------------------------------------------------------

def test_values_are_checked_and_made_canonical():
    plot = plot_of(x_type="Sampler", x_values="euler A, dpm++ 2m", y_type="Checkpoint name", y_values="beta",
                   z_type="VAE", z_values="auto, clear.safetensors")
    assert plot.axes[0].values == ("Euler a", "DPM++ 2M")
    assert plot.axes[1].values == ("beta.safetensors [def]",)
    assert plot.axes[2].values == ("Automatic", "clear.safetensors")
    # Dropdown values are used for axes with a list (unless csv_mode), and recorded as CSV.
    picked = plot_of(x_type="Schedule type", x_values="ignored", x_values_dropdown=["Karras", "Exponential"])
    assert picked.axes[0].values == ("Karras", "Exponential") and picked.axes[0].text == "Karras,Exponential"
    typed = plot_of(x_type="Schedule type", x_values="karras", x_values_dropdown=["Exponential"], csv_mode=True)
    assert typed.axes[0].values == ("Karras",)


@pytest.mark.parametrize("given, error, message", [
    ({"x_type": "Sampler", "x_values": "Euler, Eulr"}, NotFoundError,
     r"X axis \(Sampler\): unknown sampler 'Eulr'. Choose from: Euler a, Euler, DPM\+\+ 2M"),
    ({"x_type": "Styles", "x_values": "Photo, Oil"}, NotFoundError, "unknown style 'Oil'. Choose from: Photo, Sketch"),
    ({"x_type": "Nothing", "y_type": "VAE", "y_values": "muddy.pt"}, NotFoundError, r"Y axis \(VAE\): unknown VAE 'muddy.pt'"),
    ({"x_type": "Checkpoint name", "x_values": "gamma"}, NotFoundError, "Checkpoint not found: 'gamma'"),
    ({"x_type": "Hires upscaler", "x_values": "Latent, 8x-Missing"}, NotFoundError, "8x-Missing"),
    ({"x_type": "Face restore", "x_values": "maybe"}, NotFoundError, "unknown face restorer"),
    ({"x_type": "Face restore", "x_values": "true, gfpgan"}, RequestError, "'GFPGAN' is not available"),
    ({"x_type": "Size", "x_values": "64x64, big"}, RequestError, "Size 'big' is not of the form"),
    ({"x_type": "Size", "x_values": "64x100"}, RequestError, "height must be a multiple of 8"),
    ({"x_type": "SGM noise multiplier", "x_values": "True, perhaps"}, NotFoundError, "true or false"),
    ({"x_type": "Prompt S/R", "x_values": "purple, red"}, RequestError, "Prompt S/R did not find 'purple'"),
    ({"x_type": "Prompt order", "x_values": "red, yellow"}, RequestError, "'yellow' is not in the prompt"),
    ({"x_type": "Clip skip", "x_values": "0, 2"}, RequestError, r"0 is out of range \(1 to 12\)"),
    ({"x_type": "Steps", "x_values": ""}, RequestError, r"X axis \(Steps\): no values"),
    ({"x_type": "Eta", "x_values": "5"}, RequestError, "eta must be between 0 and 2"),
    ({"x_type": "FP8 mode", "x_values": "Enable"}, RequestError, "'FP8 mode' is not available here"),
    ({"x_type": "Token merging ratio", "x_values": "0.5"}, RequestError, "no token merging yet"),
    ({"x_type": "Seed", "x_values": "1-10000"}, RequestError, "at most 1000"),
])
def test_bad_values_are_refused_with_the_axis_named(given, error, message):
    with pytest.raises(error, match=message):
        plot_of(**given)


def test_prompt_search_replace_finds_text_in_the_negative_prompt_too():
    plot = plot_of(x_type="Prompt S/R", x_values="blurry, sharp")
    job = cell_job(plot, BASE, (1, 0, 0))
    assert job.request.negative_prompt == "sharp" and job.request.prompt == BASE.prompt


def test_too_large_a_grid_is_refused():
    with pytest.raises(RequestError, match="grid would be too large"):
        plot_of(BASE.replace(width=2048, height=2048), x_type="Seed", x_values="1-50")


def test_prompt_order_puts_tokens_in_each_order():
    prompt = "a red cube, blue sky, green grass"
    assert reorder_prompt(prompt, ("green grass", "red cube", "blue sky")) == "a green grass, red cube, blue sky"
    plot = plot_of(x_type="Prompt order", x_values="red, blue, green")
    assert len(plot.axes[0].values) == 6
    assert cell_job(plot, BASE, (5, 0, 0)).request.prompt == "a green cube, blue sky, red grass"


def test_each_axis_changes_the_right_part_of_the_job():
    cases = {
        "Var. strength": ("0.5", lambda j: j.request.subseed_strength == 0.5),
        "Hires steps": ("7", lambda j: j.request.extensions["hires_fix"]["steps"] == 7),
        "Hires sampler": ("Euler a", lambda j: j.request.extensions["hires_fix"]["sampler"] == "Euler a"),
        "Hires upscaler": ("4x-tiny", lambda j: j.request.extensions["hires_fix"]["upscaler"] == "4x-Tiny"),
        "Denoising": ("0.3", lambda j: j.request.extensions["hires_fix"]["denoising_strength"] == 0.3),
        "Negative Guidance minimum sigma": ("2", lambda j: j.request.s_min_uncond == 2.0),
        "Sigma min": ("0.1", lambda j: j.request.s_tmin == 0.1),
        "Sigma max": ("9", lambda j: j.request.s_tmax == 9.0),
        "Schedule min sigma": ("0.2", lambda j: j.settings == {"sigma_min": 0.2}),
        "Beta schedule beta": ("0.4", lambda j: j.settings == {"beta_dist_beta": 0.4}),
        "Extra noise": ("0.1", lambda j: j.settings == {"img2img_extra_noise": 0.1}),
        "Clip skip": ("2", lambda j: j.request.clip_skip == 2 and j.settings == {}),
        "UniPC Order": ("9", lambda j: j.settings == {"uni_pc_order": 3}),  # below the 4 steps
        "Always discard next-to-last sigma": ("true", lambda j: j.settings == {"always_discard_next_to_last_sigma": True}),
        "RNG source": ("cpu", lambda j: j.request.randn_source == "CPU"),
        "Styles": ('"photo, sketch"', lambda j: j.request.styles == ("Old", "Photo", "Sketch")),
        "Face restore": ("codeformer", lambda j: j.request.extensions["restore_faces"] == {"enabled": True,
                                                                                            "restorer": "CodeFormer"}),
        "Size": ("128x96", lambda j: (j.request.width, j.request.height) == (128, 96)),
        "Checkpoint name": ("alpha", lambda j: j.checkpoint == "alpha.safetensors [abc]"),
        "VAE": ("None", lambda j: j.request.vae == "None"),
        "Distilled CFG Scale": ("2.5", lambda j: j.request.distilled_cfg_scale == 2.5),
        "Shift": ("3", lambda j: j.request.shift == 3.0),
    }
    base = BASE.replace(styles=("Old",))
    for label, (text, holds) in cases.items():
        job = cell_job(plot_of(base, x_type=label, x_values=text), base, (0, 0, 0))
        assert holds(job), label
    off = cell_job(plot_of(x_type="Face restore", x_values="no"), BASE, (0, 0, 0))
    assert off.request.extensions["restore_faces"] == {"enabled": False}
    img2img = with_fields(BASE, mode="img2img", init_images=(Image.new("RGB", (64, 64)),))
    denoise = cell_job(plot_of(img2img, "img2img", x_type="Denoising", x_values="0.3"), img2img, (0, 0, 0))
    assert denoise.request.img2img.denoising_strength == 0.3 and "hires_fix" not in denoise.request.extensions


def test_seeds_vary_along_the_chosen_axes():
    plot = plot_of(x_type="Steps", x_values="1,2,3", y_type="CFG Scale", y_values="5,6",
                   z_type="Eta", z_values="0, 1", vary_seeds_x=True, vary_seeds_z=True)
    seeds = {cell: cell_job(plot, BASE, cell).request.seed for cell in [(0, 0, 0), (2, 1, 0), (1, 0, 1)]}
    # X varies by 1, Y not at all, Z by the X count.
    assert seeds == {(0, 0, 0): 100, (2, 1, 0): 102, (1, 0, 1): 104}


def test_loop_order_puts_the_costliest_axis_outside():
    assert loop_order([0, 0, 0]) == (2, 1, 0)        # Z, Y, X by default
    assert loop_order([1.0, 0, 0]) == (0, 2, 1)      # checkpoint on X
    assert loop_order([0, 1.0, 0.7]) == (1, 2, 0)    # checkpoint on Y, then VAE on Z
    assert loop_order([0.5, 0, 1.0]) == (2, 0, 1)
    assert loop_order([1.0, 1.0, 0]) == (2, 1, 0)    # a tie is nobody's: the default


def test_grid_infotext_keys_go_before_version():
    text = "a cat\nNegative prompt: dog\nSteps: 4, Seed: 1, Version: 1.0"
    out = with_params(text, {"Script": "X/Y/Z plot", "X Type": "Steps", "X Values": "1, 2"})
    assert out.endswith('Seed: 1, Script: X/Y/Z plot, X Type: Steps, X Values: "1, 2", Version: 1.0')
    assert parse(out)[2]["X Values"] == "1, 2"
    assert with_params("a cat\nSteps: 4, Seed: 1", {"Z Type": "Eta"}) == "a cat\nSteps: 4, Seed: 1, Z Type: Eta"


# Running and the grids, with a stand-in host -------------------------------------------------------

class Host:
    """Makes each cell a flat picture whose grey level is its job's steps x 10."""

    def __init__(self, mode="txt2img", interrupt_after=None):
        self.mode, self.catalog = mode, CATALOG
        self.calls, self.notes, self.planned, self.saved = [], [], None, []
        self.interrupt_after = interrupt_after

    @property
    def interrupted(self):
        return self.interrupt_after is not None and len(self.calls) >= self.interrupt_after

    def plan(self, jobs):
        self.planned = jobs

    def note(self, text):
        self.notes.append(text)

    def process(self, request, *, settings=None, checkpoint=None, save=True):
        self.calls.append((request, settings, checkpoint))
        image = Image.new("RGB", (request.width, request.height), (request.steps * 10,) * 3)
        return SimpleNamespace(images=[image], infotexts=[f"p\nSteps: {request.steps}, Seed: {request.seed}, "
                                                          "Version: v"],
                               seeds=[request.seed], subseeds=[request.subseed], request=request,
                               paths=[f"cell-{len(self.calls)}.png"])

    def labelled_grid(self, images, rows, column_labels, row_labels, margin=0):
        return labelled_grid(list(images), rows, list(column_labels), list(row_labels), margin)

    def save_grid(self, grid, request, infotext):
        self.saved.append(infotext)
        return f"grid-{len(self.saved)}.png"

    def result(self, request, results, *, images=None, infotexts=None, grid=None, grid_infotext=None,
               seeds=None, subseeds=None, paths=None):
        return SimpleNamespace(images=images, infotexts=infotexts, grid=grid, grid_infotext=grid_infotext,
                               results=results, seeds=seeds, subseeds=subseeds, paths=paths)


def test_a_2x3_grid_with_margin_and_legends():
    host = Host()
    plot = plot_of(x_type="Steps", x_values="1, 2", y_type="CFG Scale", y_values="5, 6, 7", margin_size=4)
    result = run_plot(plot, BASE, host)
    grid = result.grid
    assert host.planned == 6 and len(host.calls) == 6
    assert host.notes[0] == "X/Y/Z plot: cell 1 of 6" and host.notes[-1] == "X/Y/Z plot: cell 6 of 6"
    left = 64 * 3 // 4  # the row legend band
    assert grid.width == left + 2 * 64 + 4
    top = grid.height - (3 * 64 + 2 * 4)
    assert top > 0
    pixels = np.asarray(grid.convert("L"))
    assert (pixels[:top, left:] < 100).any()      # column legends drawn above
    assert (pixels[top:, :left] < 100).any()      # row legends drawn left
    # Cells in place: X across (steps 1 then 2), Y down; the margin between them is white.
    assert pixels[top + 10, left + 10] == 10 and pixels[top + 10, left + 64 + 4 + 10] == 20
    assert pixels[top + 10, left + 64 + 1] == 255
    assert pixels[grid.height - 5, left + 10] == 10
    texts = parse(result.grid_infotext)[2]
    assert texts["X Type"] == "Steps" and texts["Y Values"] == "5, 6, 7" and "Z Type" not in texts


def test_without_legend_no_label_bands():
    result = run_plot(plot_of(x_type="Steps", x_values="1, 2", y_type="CFG Scale", y_values="5, 6",
                              draw_legend=False), BASE, Host())
    assert result.grid.size == (128, 128)


def test_z_grids_side_by_side_and_what_comes_back():
    host = Host()
    plot = plot_of(x_type="Steps", x_values="1, 2", z_type="CFG Scale", z_values="5, 6",
                   include_sub_grids=True, include_lone_images=True, draw_legend=False)
    result = run_plot(plot, BASE, host)
    assert result.grid.size == (2 * 128, 64)
    # Two sub-grids, then the four cells' pictures, each with its text.
    assert [image.size for image in result.images] == [(128, 64)] * 2 + [(64, 64)] * 4
    assert "X Type: Steps" in result.infotexts[0] and "Z Type" not in result.infotexts[0]
    assert "Z Type: CFG Scale" in result.grid_infotext
    assert [parse(text)[2]["Steps"] for text in result.infotexts[2:]] == ["1", "2", "1", "2"]
    assert all("X Type" not in text for text in result.infotexts[2:])  # each cell's own job's
    assert len(host.saved) == 2  # the sub-grids (the engine saves the big one)
    assert result.seeds == [100] * 6
    # Paths: the sub-grids as saved, then each cell's own file (cells ran Z outermost: 5,5,6,6).
    assert result.paths == ["grid-1.png", "grid-2.png", "cell-1.png", "cell-2.png", "cell-3.png", "cell-4.png"]
    # One Z value: one grid only, even with sub-grids asked for.
    single = run_plot(plot_of(x_type="Steps", x_values="1, 2", include_sub_grids=True), BASE, Host())
    assert single.images == [] and single.seeds == [100]


def test_cells_run_checkpoint_first_and_stop_when_interrupted():
    host = Host()
    plot = plot_of(x_type="Steps", x_values="1, 2", y_type="Checkpoint name", y_values="alpha, beta")
    run_plot(plot, BASE, host)
    assert [(r.steps, c) for r, _, c in host.calls] == [
        (1, "alpha.safetensors [abc]"), (2, "alpha.safetensors [abc]"),
        (1, "beta.safetensors [def]"), (2, "beta.safetensors [def]")]
    stopped = Host(interrupt_after=1)
    result = run_plot(plot_of(x_type="Steps", x_values="1, 2, 3", include_lone_images=True, draw_legend=False),
                      BASE, stopped)
    assert len(stopped.calls) == 1 and len(result.images) == 1
    cells = np.asarray(result.grid.convert("L"))
    assert cells[5, 5] == 10 and cells[5, 64 + 5] == 0 and cells[5, 128 + 5] == 0  # blank where not made


def test_seeds_fixed_once_unless_kept_random():
    host = Host()
    run_plot(plot_of(BASE.replace(seed=-1), x_type="Steps", x_values="1, 2"), BASE.replace(seed=-1), host)
    seeds = {r.seed for r, _, _ in host.calls}
    assert len(seeds) == 1 and -1 not in seeds
    kept = Host()
    run_plot(plot_of(x_type="Seed", x_values="-1, 5", no_fixed_seeds=True, vary_seeds_x=True),
             BASE.replace(seed=-1), kept)
    assert [r.seed for r, _, _ in kept.calls] == [-1, 6]


def test_estimate_counts_cells_and_batches():
    script = XyzPlot()
    script.attach(CATALOG)
    request = BASE.replace(batch_size=2, n_iter=3)
    assert script.estimate(request, options(x_type="Steps", x_values="1-3", y_type="CFG Scale", y_values="5,6")) \
        == "36 images (3×2×1 cells × 6), + grid"
    assert "unknown sampler" in script.estimate(request, options(x_type="Sampler", x_values="nope"))
    # The UI's estimate knows the sizes, not the prompt: Prompt S/R is checked when the job is sent.
    assert script.estimate(GenerationRequest(), options(x_type="Prompt S/R", x_values="cat, dog")) == \
        "2 images (2×1×1 cells × 1), + grid"


def test_cell_job_does_not_change_the_base_request():
    job = CellJob(BASE)
    job.extension_option("hires_fix", "steps", 5)
    assert BASE.extensions == {} and job.request.extensions == {"hires_fix": {"steps": 5}}
    assert [axis.label for axis in axes_for("txt2img")][:5] == ["Nothing", "Seed", "Var. seed", "Var. strength",
                                                                "Steps"]
