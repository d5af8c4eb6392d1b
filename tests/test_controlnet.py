"""ControlNet units in jobs: a control image steers the picture, weight 0 is no unit, the
start/end window limits the steps, units combine, the UNet is shared, and bad units are refused
by name."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.addons import AddOns
from engine.controlnet.tiny_controlnets import build_tiny_controlnet, save_original_layout
from engine.controlnet.units import ControlUnit
from engine.engine import Engine
from engine.errors import RequestError, UserError
from engine.files import HashCache
from engine.request import GenerationRequest
from tests.support.requests import with_fields

BASE = GenerationRequest(prompt="a house", steps=4, width=64, height=64, sampler_name="Euler", seed=11,
                         save_images=False, save_grid=False)


def drawing(size=(64, 64), shape="square") -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if shape == "square":
        draw.rectangle((12, 12, 50, 50), outline="black", width=4)
    else:
        draw.ellipse((8, 20, 56, 44), outline="black", width=4)
    return image


@pytest.fixture(scope="module")
def cn_engine(engine, tmp_path_factory):
    """The session engine's model and queue, with models/ControlNet holding two tiny ControlNets
    (original single-file layout) made for its UNet."""
    data = tmp_path_factory.mktemp("controlnet")
    unet = engine.models.require().base.unet
    for name, seed in (("tiny-cn", 1), ("tiny-cn-b", 2)):
        save_original_layout(build_tiny_controlnet(unet, seed=seed), data / "models" / "ControlNet" / f"{name}.safetensors")
    return Engine(engine.models, engine.writer, engine.settings,
                  AddOns.in_data_dir(data, HashCache(data / "cache.json")), queue=engine.queue)


def unit(**fields) -> ControlUnit:
    values = dict(enabled=True, module="canny", model="tiny-cn", image=drawing())
    values.update(fields)
    return ControlUnit(**values)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_a_control_image_changes_the_picture_and_weight_zero_is_no_unit(cn_engine):
    plain = cn_engine.generate(BASE)
    square = cn_engine.generate(BASE.replace(controlnet_units=(unit(),)))
    oval = cn_engine.generate(BASE.replace(controlnet_units=(unit(image=drawing(shape="oval")),)))
    assert np.abs(pixels(square) - pixels(plain)).mean() > 0.5
    assert np.abs(pixels(square) - pixels(oval)).mean() > 0.5
    weightless = cn_engine.generate(BASE.replace(controlnet_units=(unit(weight=0.0),)))
    assert weightless.images[0].tobytes() == plain.images[0].tobytes()


def test_the_infotext_records_each_enabled_unit(cn_engine):
    result = cn_engine.generate(BASE.replace(controlnet_units=(ControlUnit(), unit(weight=0.5, threshold_a=50))))
    text = result.infotexts[0]
    assert ('ControlNet 1: "Module: canny, Model: tiny-cn, Weight: 0.5, Resize Mode: Crop and Resize, '
            'Processor Res: 512, Threshold A: 50, Threshold B: -1, Guidance Start: 0, Guidance End: 1, '
            'Pixel Perfect: False, Control Mode: Balanced"') in text
    assert "ControlNet 0" not in text


def _steps_with_control(cn_engine, **window) -> list[int]:
    """The sampling steps (from the job's own step counter) at which the ControlNet ran."""
    net = cn_engine.addons.controlnets.load("tiny-cn")
    seen = []
    job_holder = {}
    hook = net.register_forward_hook(lambda *_: seen.append(job_holder["job"].step))
    try:
        job = cn_engine.submit(BASE.replace(steps=8, controlnet_units=(unit(**window),)))
        job_holder["job"] = job
        job.outcome()
    finally:
        hook.remove()
    return seen


def test_the_start_and_end_window_limits_the_steps_where_the_controlnet_runs(cn_engine):
    assert _steps_with_control(cn_engine) == list(range(8))
    assert _steps_with_control(cn_engine, guidance_end=0.5) == [0, 1, 2, 3]
    assert _steps_with_control(cn_engine, guidance_start=0.25, guidance_end=0.75) == [2, 3, 4, 5]


def test_two_units_combine(cn_engine):
    first = cn_engine.generate(BASE.replace(controlnet_units=(unit(),)))
    second = cn_engine.generate(BASE.replace(controlnet_units=(unit(model="tiny-cn-b", image=drawing(shape="oval")),)))
    both = cn_engine.generate(BASE.replace(controlnet_units=(unit(), unit(model="tiny-cn-b", image=drawing(shape="oval")))))
    assert np.abs(pixels(both) - pixels(first)).mean() > 0.5 and np.abs(pixels(both) - pixels(second)).mean() > 0.5


def test_control_modes_differ_from_balanced(cn_engine):
    results = {mode: cn_engine.generate(BASE.replace(controlnet_units=(unit(control_mode=mode),))).images[0].tobytes()
               for mode in ("Balanced", "My prompt is more important", "ControlNet is more important")}
    assert len(set(results.values())) == 3


def _first_step(cn_engine, monkeypatch, request):
    """The job's picture, and what the unit handed the UNet at its first call: the text states of
    the batch and the down and mid residuals (a first step starts from the seed's noise alone,
    so it is the same in every mode)."""
    from engine.controlnet import apply

    calls = []
    original = apply._residuals

    def spy(item, sample, timestep, hidden, *rest):
        down, mid = original(item, sample, timestep, hidden, *rest)
        calls.append((hidden.detach().clone(), [d.detach().clone() for d in down], mid.detach().clone()))
        return down, mid

    with monkeypatch.context() as patch:
        patch.setattr(apply, "_residuals", spy)
        result = cn_engine.generate(request)
    return result, calls[0]


def test_control_modes_act_in_their_direction(cn_engine, monkeypatch):
    """Beyond "the modes differ": "My prompt is more important" weakens the control, the shallow
    (fine detail) residuals most, and its picture stays nearer the picture without control;
    "ControlNet is more important" leaves the negative prompt's half of the batch without
    control, so that guidance pushes towards the control."""
    plain = cn_engine.generate(BASE)
    runs = {mode: _first_step(cn_engine, monkeypatch, BASE.replace(controlnet_units=(unit(control_mode=mode),)))
            for mode in ("Balanced", "My prompt is more important", "ControlNet is more important")}
    (balanced, (hidden, b_down, b_mid)) = runs["Balanced"]
    (prompt_more, (_, p_down, p_mid)) = runs["My prompt is more important"]
    (_, (_, c_down, c_mid)) = runs["ControlNet is more important"]

    # Which half of the batch is the negative prompt's: the half a different negative prompt changes.
    _, (other_hidden, _, _) = _first_step(cn_engine, monkeypatch, BASE.replace(
        negative_prompt="blurry, dark", controlnet_units=(unit(),)))
    assert hidden.shape[0] == 2
    negative = [i for i in range(2) if not torch.equal(hidden[i], other_hidden[i])]
    assert len(negative) == 1, "the batch is not [one prompt, the other]"
    negative, positive = negative[0], 1 - negative[0]

    # Balanced: the whole control, on both halves.
    assert all(d[negative].abs().sum() > 0 and d[positive].abs().sum() > 0 for d in b_down)
    # My prompt is more important: every down residual weaker, the shallowest the most, the
    # deepest (mid) untouched.
    ratios = [float(p.norm() / b.norm()) for p, b in zip(p_down, b_down)]
    assert all(r < 1 for r in ratios) and ratios == sorted(ratios) and ratios[0] < ratios[-1], ratios
    assert torch.allclose(p_mid, b_mid)
    # ControlNet is more important: no control on the negative prompt's half, the softened
    # control on the prompt's.
    for c, p in zip([*c_down, c_mid], [*p_down, p_mid]):
        assert c[negative].abs().max() == 0
        assert torch.allclose(c[positive], p[positive]) and c[positive].abs().sum() > 0
    # And the pictures: the prompt's mode stays nearer the picture without control than Balanced.
    distance = {name: float(np.abs(pixels(run) - pixels(plain)).mean())
                for name, run in (("balanced", balanced), ("prompt", prompt_more))}
    assert distance["prompt"] < 0.85 * distance["balanced"], distance


def test_the_unet_is_shared_and_given_back_unchanged(cn_engine):
    model = cn_engine.models.require()
    unet, pipelines = model.base.unet, dict(model._derived)
    cn_engine.generate(BASE.replace(controlnet_units=(unit(),)))
    cn_engine.generate(with_fields(BASE, mode="img2img", init_images=(drawing(),), denoising_strength=0.5,
                                   controlnet_units=(unit(image=None),)))
    assert model.base.unet is unet and "forward" not in unet.__dict__
    assert all(pipe.unet is unet for pipe in model._derived.values())
    assert set(model._derived) - set(pipelines) <= {"img2img", "inpaint"}  # no ControlNet copies


def test_img2img_and_inpaint_with_a_unit(cn_engine):
    picture = drawing()
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((20, 20, 44, 44), fill=255)
    request = with_fields(BASE, mode="img2img", init_images=(picture,), denoising_strength=0.6)
    plain = cn_engine.generate(with_fields(request, mask=mask))
    controlled = cn_engine.generate(with_fields(request, mask=mask, controlnet_units=(unit(module="none"),)))
    changed = np.abs(pixels(controlled) - pixels(plain)).max(-1) > 0
    assert changed[20:44, 20:44].any() and not changed[:8, :].any()  # only inside the mask (plus blur)
    # A unit without its own picture uses the init image.
    assert "ControlNet 0" in cn_engine.generate(request.replace(controlnet_units=(unit(image=None),))).infotexts[0]


def test_inpaint_preprocessor_marks_the_masked_part_for_the_controlnet(cn_engine):
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    request = with_fields(BASE, mode="img2img", init_images=(drawing(),), mask=mask, denoising_strength=0.8)
    result = cn_engine.generate(request.replace(controlnet_units=(unit(module="inpaint_only", image=None),)))
    assert "Module: inpaint_only" in result.infotexts[0]


def test_a_control_image_of_another_size_is_framed_by_the_resize_mode(cn_engine):
    wide = drawing((160, 64))
    results = {mode: cn_engine.generate(BASE.replace(controlnet_units=(unit(image=wide, resize_mode=mode),)))
               for mode in ("Just Resize", "Crop and Resize", "Resize and Fill")}
    assert len({r.images[0].tobytes() for r in results.values()}) == 3


@pytest.mark.parametrize("fields, words", [
    ({"image": None}, "ControlNet unit 0 is enabled but has no control image"),
    ({"module": "sparkles"}, "Unknown preprocessor"),
    ({"model": "nowhere"}, "model 'nowhere' not found. Available: tiny-cn, tiny-cn-b"),
    ({"model": "None"}, "has no model"),
    ({"weight": 3.0}, "weight must be between 0 and 2"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "must be below guidance_end"),
    ({"control_mode": "Loud"}, "unknown control mode 'Loud'"),
    ({"module": "depth_midas"}, "preprocessor 'depth_midas' is not available"),
])
def test_bad_units_are_refused_by_name(cn_engine, fields, words):
    with pytest.raises(UserError, match=words):
        cn_engine.submit(BASE.replace(controlnet_units=(unit(**fields),)))


def test_a_controlnet_of_another_family_is_refused(cn_engine, tiny_models, tmp_path):
    sdxl_unet = tiny_models.reference_pipeline("sdxl").unet
    folder = cn_engine.addons.controlnets.folder
    path = folder / "tiny-xl-cn.safetensors"
    save_original_layout(build_tiny_controlnet(sdxl_unet), path)
    try:
        with pytest.raises(RequestError, match="'tiny-xl-cn' is a SDXL ControlNet, but the loaded checkpoint is SD 1.x"):
            cn_engine.submit(BASE.replace(controlnet_units=(unit(model="tiny-xl-cn"),)))
    finally:
        path.unlink()


def test_hash_suffixed_names_from_client_programs_resolve(cn_engine):
    result = cn_engine.generate(BASE.replace(controlnet_units=(unit(model="tiny-cn [0123abcd]"),)))
    assert "Model: tiny-cn," in result.infotexts[0]
    assert torch.is_tensor(cn_engine.addons.controlnets.load("tiny-cn").controlnet_cond_embedding.conv_in.weight)


def test_hires_fix_keeps_control_in_its_second_pass(cn_engine):
    net = cn_engine.addons.controlnets.load("tiny-cn")
    sizes = []
    hook = net.register_forward_hook(lambda module, args, output: sizes.append(tuple(args[0].shape[-2:])))
    try:
        result = cn_engine.generate(BASE.replace(controlnet_units=(unit(),), extensions={
            "hires_fix": {"enabled": True, "scale": 2.0, "upscaler": "Lanczos", "steps": 2, "denoising_strength": 0.5}}))
    finally:
        hook.remove()
    assert result.images[0].size == (128, 128)
    assert (8, 8) in sizes and (16, 16) in sizes  # the first pass and the hires pass, both controlled


def test_only_masked_inpaint_frames_the_control_like_the_crop(cn_engine):
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((36, 36, 60, 60), fill=255)
    request = with_fields(BASE, mode="img2img", init_images=(drawing(),), mask=mask, denoising_strength=0.6,
                          inpaint_full_res=True, inpaint_full_res_padding=4)
    own = cn_engine.generate(request.replace(controlnet_units=(unit(image=drawing(shape="oval")),)))
    fallback = cn_engine.generate(request.replace(controlnet_units=(unit(module="inpaint_only", image=None),)))
    for result in (own, fallback):
        changed = np.abs(np.asarray(result.images[0], dtype=np.int16)
                         - np.asarray(drawing(), dtype=np.int16)).max(-1) > 0
        assert changed[36:60, 36:60].any() and not changed[:24, :24].any()


def test_pasting_the_infotext_restores_the_units_and_the_picture(cn_engine):
    from ui import paste
    from ui.controlnet_ui import units_from_values
    original = unit(model="tiny-cn-b", weight=0.75, threshold_a=60, threshold_b=180, guidance_end=0.8,
                    control_mode="My prompt is more important", resize_mode="Just Resize")
    made = cn_engine.generate(BASE.replace(controlnet_units=(ControlUnit(), original)))
    values = paste.control_values(made.infotexts[0])
    assert values["cn::1::model"] == "tiny-cn-b" and values["cn::1::enabled"] is True
    assert not any(key.startswith("cn::0::") for key in values)
    values["cn::1::image"] = drawing()  # pictures are not in an infotext: the user gives it again
    [restored] = units_from_values(values)
    again = cn_engine.generate(BASE.replace(controlnet_units=(ControlUnit(), restored)))
    assert again.images[0].tobytes() == made.images[0].tobytes()
