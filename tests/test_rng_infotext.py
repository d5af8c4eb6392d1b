"""An infotext's RNG key brings the noise source back: A1111's infotexts carry none for its default
(CUDA) noise, which "GPU" reproduces here without a CUDA card, so a picture made with A1111's
defaults on an NVIDIA card is made again here."""

from __future__ import annotations

import numpy as np
import torch

from engine.output import infotext
from engine.request import GenerationRequest
from engine.sampling.noise import ImageNoise

# torch.manual_seed(0); torch.randn(3, device="cuda") as PyTorch prints it on NVIDIA cards (the NV
# generator itself is checked against published CUDA output in test_sampling_noise.py).
CUDA_SEED_0 = [-0.9247, -0.4253, -2.6438]


def test_an_infotext_without_rng_gives_cuda_noise_and_rng_nv_too(engine):
    """A1111's infotexts carry no RNG key for its default (CUDA) noise: pasting one here draws the
    noise a CUDA card draws, and one with RNG: NV the same."""
    fields = infotext.request_fields("a cat\nSteps: 2, Sampler: Euler, Seed: 0, Size: 64x64")
    assert fields["randn_source"] == "GPU"
    noise = ImageNoise((4, 8, 8), [fields["seed"]], source=fields["randn_source"]).next()
    assert np.allclose(noise.reshape(-1)[:3].numpy(), CUDA_SEED_0, atol=1e-4)
    nv = infotext.request_fields("a cat\nSteps: 2, Sampler: Euler, Seed: 0, Size: 64x64, RNG: NV")
    assert nv["randn_source"] == "NV"
    assert torch.equal(ImageNoise((4, 8, 8), [0], source="NV").next(), noise)
    made = engine.generate(GenerationRequest(prompt="a cat", steps=2, width=64, height=64, sampler_name="Euler",
                                             seed=0, save_images=False, save_grid=False, randn_source="NV"))
    assert infotext.parse(made.infotexts[0])[2]["RNG"] == "NV"
    assert infotext.request_fields(made.infotexts[0])["randn_source"] == "NV"
