"""The extension loader and contract, and the built-in tiling extension, through the engine."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.addons import AddOns
from engine.engine import Engine
from engine.errors import RequestError
from engine.files import HashCache
from engine.request import GenerationRequest
from tests.conftest import make_engine
from tests.support.requests import with_fields

THIRD_PARTY = Path(__file__).parent / "support" / "extensions"
BASE = GenerationRequest(prompt="a texture", steps=3, width=64, height=64, sampler_name="Euler",
                         seed=21, save_images=False, save_grid=False)


@pytest.fixture(scope="module")
def ext_engine(tiny_models, tmp_path_factory):
    """tiny-sd1 with the test extensions folder added, as a user's extensions/ would be."""
    data = tmp_path_factory.mktemp("extensions")
    engine = make_engine(tiny_models, data)
    addons = AddOns.in_data_dir(data, HashCache(data / "cache.json"), extension_folders=[THIRD_PARTY])
    engine = Engine(engine.models, engine.writer, engine.settings, addons, queue=engine.queue)
    yield engine
    engine.shutdown()


def test_loader_finds_builtins_and_third_party_ones_and_keeps_their_order(ext_engine):
    entries = ext_engine.addons.extensions.entries
    assert [e.name for e in entries if not e.error and not e.is_script] == \
        ["face_painter", "glow", "tiling", "hires_fix", "restore_faces", "broken_hook"]
    scripts = [e.name for e in ext_engine.addons.extensions.scripts("img2img")]
    assert {"outpainting", "sd_upscale"} <= set(scripts)
    assert [e.name for e in ext_engine.addons.extensions.scripts("txt2img")] == \
        [name for name in scripts if "txt2img" in ext_engine.addons.extensions.find_script(name, "img2img").extension.modes]
    by_name = {e.name: e for e in entries}
    assert by_name["tiling"].builtin and not by_name["glow"].builtin
    assert by_name["broken_import"].status == "failed"
    assert "broken on purpose" in by_name["broken_import"].error
    assert "must export `extension`" in by_name["no_export"].error and "or `script`" in by_name["no_export"].error


def test_a_third_party_extension_is_called_with_its_options(ext_engine):
    plain = ext_engine.generate(BASE)
    glowing = ext_engine.generate(BASE.replace(extensions={"glow": {"enabled": True, "amount": 30}}))
    expected = np.minimum(np.asarray(plain.images[0], dtype=np.int16) + 30, 255)
    assert np.array_equal(np.asarray(glowing.images[0], dtype=np.int16), expected)
    assert "Glow: 30" in glowing.infotexts[0] and "Glow" not in plain.infotexts[0]


def test_an_extension_that_raises_is_skipped_and_listed_as_failed(ext_engine):
    result = ext_engine.generate(BASE.replace(extensions={"broken_hook": {"enabled": True}}))
    assert result.images[0].size == (64, 64)
    entry = ext_engine.addons.extensions.find("broken_hook")
    assert entry.status == "failed" and "process exploded" in entry.error
    assert ext_engine.generate(BASE).images


def test_bad_extension_options_are_refused_by_name(ext_engine):
    with pytest.raises(RequestError, match="Extension not found: 'sparkle'"):
        ext_engine.submit(BASE.replace(extensions={"sparkle": {"enabled": True}}))
    with pytest.raises(RequestError, match="Glow amount must be between 0 and 100"):
        ext_engine.submit(BASE.replace(extensions={"glow": {"enabled": True, "amount": 500}}))
    with pytest.raises(RequestError, match="unknown field 'colour'"):
        ext_engine.submit(BASE.replace(extensions={"glow": {"colour": "red"}}))


def test_disabling_is_persisted_and_a_disabled_extension_does_nothing(ext_engine):
    registry = ext_engine.addons.extensions
    ext_engine.settings.update({"disabled_extensions": ["glow"]})
    try:
        again = Engine(ext_engine.models, ext_engine.writer, ext_engine.settings, ext_engine.addons,
                       queue=ext_engine.queue)
        assert not registry.find("glow").enabled and registry.find("tiling").enabled
        result = again.generate(BASE.replace(extensions={"glow": {"enabled": True}}))
        assert "Glow" not in result.infotexts[0]
    finally:
        ext_engine.settings.update({"disabled_extensions": []})
        registry.set_enabled({e.name for e in registry.entries})


def _seams(image) -> tuple[float, float, float]:
    """Mean difference across the left/right seam, the top/bottom seam, and between neighbours."""
    a = np.asarray(image, dtype=np.float64)
    neighbours = (np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=0)).mean()) / 2
    return np.abs(a[:, 0] - a[:, -1]).mean(), np.abs(a[0] - a[-1]).mean(), neighbours


def _padding_modes(model) -> set[str]:
    return {m.padding_mode for module in (model.base.unet, model.base.vae) for m in module.modules()
            if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_tiling_wraps_the_picture_and_restores_the_model(ext_engine, mode):
    from PIL import Image
    request = BASE.replace(mode=mode, width=128, height=128, steps=6)
    if mode == "img2img":
        noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
        request = with_fields(request, init_images=(Image.fromarray(noise),), denoising_strength=1.0)
    model = ext_engine.models.require()
    tiled = ext_engine.generate(request.replace(extensions={"tiling": {"enabled": True}}))
    plain = ext_engine.generate(request)
    assert _padding_modes(model) == {"zeros"}
    assert "Tiling: True" in tiled.infotexts[0]
    horizontal, vertical, neighbours = _seams(tiled.images[0])
    assert max(horizontal, vertical) <= 1.25 * neighbours
    horizontal, vertical, neighbours = _seams(plain.images[0])
    assert max(horizontal, vertical) > 1.25 * neighbours, "without tiling the edges do not meet"


def test_tiling_is_undone_even_when_the_job_fails():
    import importlib.util
    spec = importlib.util.spec_from_file_location("tiling_for_test",
                                                  Path(__file__).parent.parent / "extensions" / "tiling" / "__init__.py")
    tiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiling)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 3, padding=1,
                                                                                  padding_mode="reflect"))
    with pytest.raises(RuntimeError):
        with tiling.circular_padding(net):
            assert {m.padding_mode for m in net} == {"circular"}
            raise RuntimeError("the job failed")
    assert [m.padding_mode for m in net] == ["zeros", "reflect"]


def test_the_guides_example_extension_loads_and_works(tmp_path):
    from PIL import Image

    from engine.extensions.registry import ExtensionRegistry
    guide = (Path(__file__).parent.parent / "docs" / "extensions.md").read_text()
    code = guide.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "sepia").mkdir()
    (tmp_path / "sepia" / "__init__.py").write_text(code)
    registry = ExtensionRegistry([(tmp_path, False)])
    [active] = registry.active("txt2img", registry.check("txt2img", {"Sepia": {"enabled": True}}))
    toned = active.extension.process(Image.new("RGB", (4, 4), (0, 0, 255)), None, active.options, None)
    assert toned.size == (4, 4) and toned.getpixel((0, 0)) != (0, 0, 255)
    assert active.extension.infotext(None, active.options) == {"Sepia": 0.5}


def _unet_sizes(engine):
    """Records the latent size of every UNet call while a job runs."""
    seen = []
    hook = engine.models.require().base.unet.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    return seen, hook


# The second pass runs its steps in full (of a schedule of steps / strength), as the mature UI's
# hires pass does: the first pass's 3, or the hires steps asked for.
@pytest.mark.parametrize("options, size, second_pass_calls", [
    ({}, (128, 128), 3),
    ({"upscaler": "Lanczos", "steps": 10, "denoising_strength": 0.5}, (128, 128), 10),
    ({"upscaler": "Latent (nearest-exact)", "scale": 1.5}, (96, 96), 3),
    ({"resize_x": 96, "resize_y": 128, "upscaler": "Nearest"}, (96, 128), 3),  # crop, then upscale
    ({"resize_x": 128}, (128, 128), 3),                                     # one side keeps the shape
])
def test_hires_fix_reaches_the_target_size_with_the_requested_second_pass(ext_engine, options, size,
                                                                          second_pass_calls):
    seen, hook = _unet_sizes(ext_engine)
    try:
        result = ext_engine.generate(BASE.replace(extensions={"hires_fix": {"enabled": True, **options}}))
    finally:
        hook.remove()
    assert result.images[0].size == size
    first, second = seen[:3], seen[3:]
    assert first == [(8, 8)] * 3
    assert second == [(size[1] // 8, size[0] // 8)] * second_pass_calls
    from engine.output.infotext import parse
    params = parse(result.infotexts[0])[2]
    assert params["Size"] == "64x64" and params["Hires upscaler"] == options.get("upscaler", "Latent")
    assert params["Denoising strength"] == str(options.get("denoising_strength", 0.7))
    assert ("Hires resize" in params) == ("resize_x" in options)


def test_hires_fix_keeps_the_seed_and_is_reproducible(ext_engine):
    request = BASE.replace(extensions={"hires_fix": {"enabled": True, "upscaler": "Lanczos"}})
    first, again = ext_engine.generate(request), ext_engine.generate(request)
    assert first.images[0].tobytes() == again.images[0].tobytes()
    other = ext_engine.generate(request.replace(seed=22))
    assert other.images[0].tobytes() != first.images[0].tobytes()


def test_field_values_are_checked_with_clear_words():
    from engine.extensions.registry import Field
    at_least_one = Field("count", "Count", 1, kind="number", minimum=1)
    assert at_least_one.coerce(3.0, "Demo") == 3
    for bad, words in ((0, "at least 1, got 0"), (float("nan"), "must be a number"), (True, "must be a number")):
        with pytest.raises(RequestError, match=words):
            at_least_one.coerce(bad, "Demo")
    with pytest.raises(RequestError, match="Demo: Mode must be one of"):
        Field("mode", "Mode", "a", kind="radio", choices=("a", "b")).coerce("c", "Demo")


STOPPING = """
from engine.errors import JobInterrupted, RequestError
from engine.extensions.registry import Extension, Field


class Stopping(Extension):
    name = "stopping"
    fields = (Field("enabled", "On", False), Field("how", "How", "interrupt"))

    def process(self, image, request, options, ctx):
        if options["how"] == "interrupt":
            raise JobInterrupted("stopped by the user")
        raise RequestError("the request cannot be done", "prompt")


extension = Stopping()
"""


@pytest.mark.parametrize("how, error", [("interrupt", "JobInterrupted"), ("refuse", "RequestError")])
def test_a_stopped_job_or_a_refused_request_does_not_mark_the_extension_failed(tmp_path, how, error):
    from engine import errors
    from engine.extensions import registry as extensions
    (tmp_path / "stopping").mkdir()
    (tmp_path / "stopping" / "__init__.py").write_text(STOPPING)
    registry = extensions.ExtensionRegistry([(tmp_path, False)])
    active = registry.active("txt2img", {"stopping": {"enabled": True, "how": how}})
    with pytest.raises(getattr(errors, error)):
        extensions.process(registry, active, None, None, None)
    assert registry.find("stopping").error is None and registry.for_mode("txt2img")


@pytest.mark.parametrize("upscaler", ["Lanczos", "Latent (bicubic)"])
def test_hires_fix_at_denoising_0_upscales_without_sampling(ext_engine, upscaler):
    """As in the mature UI: no second pass, the first picture enlarged and put through the VAE
    (its latents scaled, for a latent upscaler). Checked against diffusers' VAE used by hand."""
    import torch
    import torch.nn.functional as F

    first = ext_engine.generate(BASE)
    seen, hook = _unet_sizes(ext_engine)
    try:
        result = ext_engine.generate(BASE.replace(extensions={"hires_fix": {
            "enabled": True, "upscaler": upscaler, "denoising_strength": 0.0}}))
    finally:
        hook.remove()
    assert seen == [(8, 8)] * 3  # the first pass only
    vae = ext_engine.models.require().base.vae
    image = first.images[0] if upscaler.startswith("Latent") else first.images[0].resize((128, 128),
                                                                                         Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()
        if upscaler.startswith("Latent"):
            latents = F.interpolate(latents, size=(16, 16), mode="bicubic")
        decoded = vae.decode(latents).sample
    expected = ((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy()
    assert result.images[0].size == (128, 128)
    assert np.abs(np.asarray(result.images[0], dtype=np.float32) - expected).max() <= 1.5
