"""Property tests: the infotext reader and writer, the file name pattern and the request checks
over arbitrary input. Each either answers or raises the error users are shown, nothing else."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.output import infotext
from engine.errors import UserError
from engine.output.filenames import NAME_BYTES, ImageFields, expand, safe_name
from engine.request import GenerationRequest, Img2ImgOptions

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text a prompt may hold: no line breaks (they separate the infotext's parts), no leading
# "Negative prompt:" (that starts the negative part).
ONE_LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=200) \
    .filter(lambda t: not t.lstrip().startswith(infotext.NEGATIVE_PREFIX))
# Keys as the ecosystem writes them ("CFG scale", "Hires upscaler"); values without outer spaces.
KEY = st.from_regex(r"[A-Z][A-Za-z]{0,8}( [A-Za-z]{1,8}){0,2}", fullmatch=True).filter(lambda k: k != "Negative prompt")
VALUE = st.one_of(st.integers(-10**12, 10**12), st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
                                                        min_size=1, max_size=40))


@SETTINGS
@given(st.text(max_size=2000))
def test_reading_any_text_as_an_infotext_never_fails(text):
    prompt, negative, params = infotext.parse(text)
    assert isinstance(prompt, str) and isinstance(negative, str) and isinstance(params, dict)
    fields = infotext.request_fields(text)  # what "paste" and the API's `infotext` use
    assert isinstance(fields, dict)


@SETTINGS
@given(ONE_LINE.map(str.strip), ONE_LINE.map(str.strip), st.dictionaries(KEY, VALUE, min_size=3, max_size=8))
def test_what_is_written_reads_back(prompt, negative, params):
    params = {"Steps": 20, "Seed": 1, "Size": "512x512", **params}
    text = infotext.build(prompt, negative, params)
    read_prompt, read_negative, read_params = infotext.parse(text)
    assert read_prompt == prompt and read_negative == negative
    for key, value in params.items():
        assert read_params[key] == infotext.format_value(value).strip('"') or \
            read_params[key] == str(value), (key, value, read_params.get(key))


@SETTINGS
@given(st.text(max_size=300), st.text(max_size=3000), st.integers(-2**40, 2**40))
def test_any_pattern_and_prompt_make_one_safe_file_name(pattern, prompt, seed):
    fields = ImageFields(seed=seed, prompt=prompt, negative_prompt=prompt, model_name=prompt[:50],
                         sampler="Euler a", steps=20, cfg=7.0, width=512, height=512)
    name = safe_name(expand(pattern, fields, dt.datetime(2026, 11, 22, 12, 0, 0)))
    assert "/" not in name and "\\" not in name and ".." not in name
    assert not any(ord(ch) < 32 for ch in name)
    assert len(name.encode("utf-8")) <= NAME_BYTES
    assert name == name.strip(" .")


PICTURE = Image.new("RGB", (8, 8))
NUMBER = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True))


@SETTINGS
@given(width=NUMBER, height=NUMBER, steps=NUMBER, cfg=NUMBER, seed=NUMBER, batch=NUMBER,
       denoise=NUMBER, prompt=st.text(max_size=100))
def test_request_checks_accept_or_name_the_field(width, height, steps, cfg, seed, batch, denoise, prompt):
    request = GenerationRequest(mode="img2img", prompt=prompt, width=width, height=height, steps=steps,
                                cfg_scale=cfg, seed=seed, batch_size=batch,
                                img2img=Img2ImgOptions(init_images=(PICTURE,), denoising_strength=denoise))
    try:
        request.validate()
    except UserError as error:
        assert error.field and error.message
