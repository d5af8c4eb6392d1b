"""Scripts, the second kind of extension: loading, the host they get, progress across their jobs,
failures, and the guide's example script run through a real engine."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import RequestError, ScriptError
from engine.jobs import Job
from engine.output.grids import labelled_grid
from engine.request import GenerationRequest, ScriptChoice
from tests.conftest import make_engine
from tests.support.requests import with_fields

BASE = GenerationRequest(prompt="a red cube", steps=2, width=64, height=64, sampler_name="Euler",
                         seed=11, save_images=False, save_grid=False)

FAILING = '''
from engine.extensions import Field, Script


class Failing(Script):
    name = "failing"
    title = "Failing script"
    fields = (Field("where", "Where", "run", kind="radio", choices=("run", "check")),)

    def check(self, request, options):
        if options["where"] == "check":
            from engine.errors import RequestError
            raise RequestError("Failing script: refused on purpose", "script_args")

    def run(self, request, options, host):
        host.process(request)
        raise ZeroDivisionError("a bug in the script")


script = Failing()
'''


def _guide_script() -> str:
    guide = (Path(__file__).parent.parent / "docs" / "extensions.md").read_text()
    scripts_part = guide.split("## Scripts: the second kind", 1)[1]
    return scripts_part.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def script_engine(tiny_models, tmp_path_factory):
    """tiny-sd1 with two third-party scripts in the data folder: the guide's and a failing one."""
    data = tmp_path_factory.mktemp("scripts")
    for name, code in (("seed_strip", _guide_script()), ("failing", FAILING)):
        (data / "extensions" / name).mkdir(parents=True)
        (data / "extensions" / name / "__init__.py").write_text(code)
    engine = make_engine(tiny_models, data)
    yield engine
    engine.shutdown()


def test_the_guides_example_script_runs_its_jobs_and_returns_a_labelled_strip(script_engine):
    registry = script_engine.addons.extensions
    assert "seed_strip" in [e.name for e in registry.scripts("txt2img")]
    assert "seed_strip" not in [e.name for e in registry.scripts("img2img")]  # its modes
    result = script_engine.generate(BASE.replace(script=ScriptChoice("Seed strip", {"count": 3})))
    # Each picture is the job an ordinary request with that seed makes.
    for index, image in enumerate(result.images):
        alone = script_engine.generate(BASE.replace(seed=BASE.seed + index))
        difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(alone.images[0], dtype=np.int16))
        assert difference.max() <= 1
    assert result.seeds == [11, 12, 13] and len(result.infotexts) == 3
    assert "Seed: 12" in result.infotexts[1]
    # One row of three 64x64 pictures under a band of labels.
    assert result.grid.width == 3 * 64 and result.grid.height > 64
    gallery = result.gallery()
    assert gallery[0][0] is result.grid and gallery[0][1] == result.infotexts[0] and len(gallery) == 4


def test_script_options_are_checked_against_the_scripts_fields(script_engine):
    with pytest.raises(RequestError, match="Seed strip: Pictures must be between 2 and 16, got 40"):
        script_engine.submit(BASE.replace(script=ScriptChoice("seed_strip", {"count": 40})))
    with pytest.raises(RequestError, match="Seed strip: unknown option 'colour'"):
        script_engine.submit(BASE.replace(script=ScriptChoice("seed_strip", {"colour": 1})))
    with pytest.raises(RequestError, match="Script 'Nope' not found. Scripts in txt2img: .*Seed strip"):
        script_engine.submit(BASE.replace(script=ScriptChoice("Nope")))
    with pytest.raises(RequestError, match="does not work in img2img"):
        script_engine.submit(with_fields(BASE, mode="img2img", init_images=(Image.new("RGB", (64, 64)),),
                                         script=ScriptChoice("seed_strip")))


def test_a_failing_script_ends_its_job_with_a_message_and_the_engine_keeps_serving(script_engine):
    with pytest.raises(RequestError, match="refused on purpose"):
        script_engine.submit(BASE.replace(script=ScriptChoice("failing", {"where": "check"})))
    with pytest.raises(ScriptError, match="The script 'Failing script' failed: ZeroDivisionError"):
        script_engine.generate(BASE.replace(script=ScriptChoice("failing")))
    entry = script_engine.addons.extensions.find_script("failing", "txt2img")
    assert entry.error is None  # a bug in one job does not disable it
    assert script_engine.generate(BASE).images


def test_interrupt_stops_a_script_between_its_jobs(script_engine):
    job = script_engine.submit(BASE.replace(script=ScriptChoice("seed_strip", {"count": 16})))
    while job.step == 0 and not job.done:  # let the first job start, then stop the script
        job.wait(0.01)
    job.interrupt()
    result = job.outcome()
    assert 1 <= len(result.images) < 16 and result.interrupted


def test_progress_spans_every_job_a_script_runs():
    job = Job(lambda job: None)
    job.plan_parts(3)
    job.next_part()
    job.set_total(10, 1)
    assert job.total_steps == 30 and (job.batch_index, job.batch_count) == (0, 3)
    job.advance(10)
    job.next_part()
    job.set_total(5, 1)  # a later part with fewer steps: the estimate follows what runs now
    assert job.total_steps == 10 + 5 * 2 and job.batch_index == 1
    job.set_batch(4)  # the run's own batch counter does not replace the script's part
    assert job.batch_index == 1


def test_a_labelled_grid_puts_labels_above_columns_and_left_of_rows():
    cells = [Image.new("RGB", (40, 30), (0, 200, 0)) for _ in range(6)]
    plain = labelled_grid(cells, 2, [], [])
    assert plain.size == (3 * 40, 2 * 30)
    spaced = labelled_grid(cells, 2, [], [], margin=4)
    assert spaced.size == (3 * 40 + 2 * 4, 2 * 30 + 4)
    labelled = labelled_grid(cells, 2, ["Steps: 10", "Steps: 20", "Steps: 30"], ["CFG: 5", "CFG: 7"])
    left = 40 * 3 // 4
    assert labelled.width == left + 3 * 40 and labelled.height > 2 * 30
    pixels = np.asarray(labelled)
    band = labelled.height - 2 * 30
    assert (pixels[:band, left:].sum(-1) < 200).any()        # text in the column band
    assert (pixels[band:, :left].sum(-1) < 200).any()        # text in the row band
    assert (pixels[band:, left:] == (0, 200, 0)).all()       # the pictures themselves untouched
