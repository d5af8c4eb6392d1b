"""tile_colorfix(+sharp) and inpaint_only correct the UNet's prediction after each call as the
ControlNet extension does (engine/controlnet/latent_fixes.py): checked against the formulas
computed here in numpy, and end to end in the direction each one promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.controlnet import preprocessors
from engine.controlnet.latent_fixes import LatentFix, latent_mask
from engine.networks.vae import encode
from engine.runs.img2img import image_tensor
from tests import test_controlnet
from tests.test_controlnet import BASE, pixels, unit

cn_engine = test_controlnet.cn_engine   # the engine with tiny ControlNets, a module fixture

RNG = np.random.default_rng(5)
ALPHAS = torch.linspace(0.9991, 0.0047, 1000, dtype=torch.float64)


def _box_blur(x: np.ndarray, k: int) -> np.ndarray:
    """A (2k+1)-wide mean with the edges repeated, over the last two axes."""
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(k, k), (k, k)], mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * k + 1, 2 * k + 1), axis=(-2, -1))
    return windows.mean(axis=(-2, -1))


def _x0(x_t, output, alpha, prediction):
    if prediction == "v_prediction":
        return np.sqrt(alpha) * x_t - np.sqrt(1 - alpha) * output
    return (x_t - np.sqrt(1 - alpha) * output) / np.sqrt(alpha)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("module", ["tile_colorfix", "tile_colorfix+sharp", "inpaint_only"])
def test_the_prediction_is_corrected_by_the_extensions_formula(module, prediction):
    x_t, output, control = (RNG.standard_normal((2, 4, 12, 10)) for _ in range(3))
    control = control[:1]
    t, k, weight, sharpness = 613, 2, 0.75, 1.5
    mask = np.zeros((1, 1, 12, 10))
    mask[..., 3:9, 2:6] = 1
    fix = LatentFix(module, weight, torch.tensor(control, dtype=torch.float32), k, sharpness,
                    torch.tensor(mask, dtype=torch.float32))
    cond_mark = torch.tensor([0.0, 1.0])[:, None, None, None]   # [negative, positive]
    ours = fix.apply(torch.tensor(x_t, dtype=torch.float32), torch.tensor(float(t)),
                     torch.tensor(output, dtype=torch.float32), ALPHAS.float(), prediction, cond_mark).double().numpy()
    alpha = float(ALPHAS[t])
    x0 = _x0(x_t, output, alpha, prediction)
    if module == "inpaint_only":
        expected = x0 * mask + control * (1 - mask)
    else:
        expected = x0 - _box_blur(x0, k) + _box_blur(control, k)
        if module.endswith("+sharp"):
            detail = sharpness * 0.01
            blurred = detail * _box_blur(expected, k) + (1 - detail) * expected
            expected = np.concatenate([blurred[:1], expected[1:]])
    # What the fix hands back, read as x0, is the corrected x0, blended by the weight.
    blended = _x0(x_t, ours, alpha, prediction)
    np.testing.assert_allclose(blended, weight * expected + (1 - weight) * x0, rtol=1e-3, atol=1e-3)


def test_the_mask_grows_to_latent_size_by_a_pixel():
    repaint = torch.zeros(1, 1, 64, 64)
    repaint[..., 24:40, 24:40] = 1
    small = latent_mask(repaint)[0, 0]
    assert small.shape == (8, 8)
    assert small[3:5, 3:5].all() and small[2, 3] == 1 and small[0, 0] == 0   # the seam is repainted


def _red(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (200, 30, 30))
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill=(230, 60, 40))
    return image


def test_tile_colorfix_gives_the_picture_the_control_pictures_colours(cn_engine):
    plain = pixels(cn_engine.generate(BASE.replace(controlnet_units=(unit(module="none", image=_red()),))))
    fixed = pixels(cn_engine.generate(BASE.replace(controlnet_units=(
        unit(module="tile_colorfix", image=_red(), threshold_a=4),),)))
    target = np.asarray(_red(), dtype=np.int16)
    # Closer to the control picture's colours than the same unit without the fix.
    assert np.abs(fixed.mean((0, 1)) - target.mean((0, 1))).sum() < np.abs(plain.mean((0, 1)) - target.mean((0, 1))).sum()
    sharp = pixels(cn_engine.generate(BASE.replace(controlnet_units=(
        unit(module="tile_colorfix+sharp", image=_red(), threshold_a=4, threshold_b=2.0),),)))
    assert not np.array_equal(sharp, fixed)
    assert preprocessors.find("tile_colorfix").threshold_a.default == 8


def test_inpaint_only_keeps_the_control_picture_outside_its_mask(cn_engine, monkeypatch):
    """A txt2img job with an inpaint_only unit whose mask covers the left half: the right half's
    predicted picture is pinned to the control picture's latents at every step, so the latents
    the VAE decodes there are the control picture's (the latent mask grows by one column); with
    the global inpaint preprocessor they are not. (Compared as latents: the tiny VAE's attention
    lets every pixel see every latent.)"""
    picture = _red()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    pipe = cn_engine.models.require().base
    decoded = []
    real_decode = pipe.vae.decode

    def recording(latents, *args, **kwargs):
        decoded.append(latents.detach().float().clone())
        return real_decode(latents, *args, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", recording)
    cn_engine.generate(BASE.replace(controlnet_units=(unit(module="inpaint_only", image=picture, mask=mask),),))
    cn_engine.generate(BASE.replace(controlnet_units=(unit(module="inpaint", image=picture, mask=mask),),))
    pinned, free = decoded[0], decoded[1]
    with torch.inference_mode():
        control = encode(pipe.vae, image_tensor(picture)).float() / pipe.vae.config.scaling_factor
    torch.testing.assert_close(pinned[..., 5:], control[..., 5:], rtol=1e-4, atol=1e-4)
    assert (free[..., 5:] - control[..., 5:]).abs().mean() > 10 * (pinned[..., 5:] - control[..., 5:]).abs().mean()
    assert (pinned[..., :4] - control[..., :4]).abs().mean() > 1e-3   # the masked part is generated


def test_inpaint_only_lama_says_it_ran_as_inpaint_only(cn_engine):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    lama = cn_engine.generate(BASE.replace(controlnet_units=(
        unit(module="inpaint_only+lama", image=_red(), mask=mask),),))
    only = cn_engine.generate(BASE.replace(controlnet_units=(unit(module="inpaint_only", image=_red(), mask=mask),),))
    assert lama.images[0].tobytes() == only.images[0].tobytes()
    assert any("LaMa" in warning and "inpaint_only" in warning for warning in lama.warnings)
    assert not any("LaMa" in warning for warning in only.warnings)
