"""The noise sources: the NV generator reproduces torch's CUDA randn on the CPU (the Philox4x32-10
counter generator, checked against the published known-answer vectors and against CUDA output
printed in public), "GPU" means that noise on a machine without CUDA, and an infotext's RNG key
brings the source back, so a picture made with A1111's default noise on an NVIDIA card is made
again here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import infotext
from engine.request import GenerationRequest
from engine.sampling.noise import ImageNoise, slerp
from engine.sampling.philox import PhiloxGenerator, philox4x32

# Random123's known-answer vectors for philox4x32-10 (counter, key) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
# torch.manual_seed(0); torch.randn(3, device="cuda") as printed by PyTorch on NVIDIA cards
# (four decimals, as the tensor repr shows them).
CUDA_SEED_0 = [-0.9247, -0.4253, -2.6438]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_core_gives_the_published_known_answers(counter, key, expected):
    out = philox4x32(np.array(counter, dtype=np.uint32)[:, None], np.array(key, dtype=np.uint32)[:, None])
    assert tuple(int(v) for v in out[:, 0]) == expected


def _reference_randn(seed: int, offset: int, count: int) -> list[float]:
    """The same stream in plain Python integers and math, from the algorithm's description."""
    import math

    def mulhilo(a, b):
        product = a * b
        return product >> 32, product & 0xFFFFFFFF

    values = []
    for index in range(count):
        c = [offset, 0, index, 0]
        k = [seed & 0xFFFFFFFF, seed >> 32]
        for round_index in range(10):
            if round_index:
                k = [(k[0] + 0x9E3779B9) & 0xFFFFFFFF, (k[1] + 0xBB67AE85) & 0xFFFFFFFF]
            hi0, lo0 = mulhilo(0xD2511F53, c[0])
            hi1, lo1 = mulhilo(0xCD9E8D57, c[2])
            c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
        unit = float(np.float32(2.3283064e-10))
        unit_2pi = float(np.float32(2.3283064e-10 * 6.2831855))
        u = c[0] * unit + unit / 2
        v = c[1] * unit_2pi + unit_2pi / 2
        values.append(float(np.float32(math.sqrt(-2.0 * math.log(u)) * math.sin(v))))
    return values


def test_nv_generator_reproduces_cuda_randn():
    assert np.allclose(PhiloxGenerator(0).randn((3,)), CUDA_SEED_0, atol=1e-4)
    for seed in (0, 1234567, 2**32 + 5):
        generator = PhiloxGenerator(seed)
        first, second = generator.randn((2, 3)), generator.randn((5,))
        assert np.allclose(first.reshape(-1), _reference_randn(seed, 0, 6), atol=1e-6)
        assert np.allclose(second, _reference_randn(seed, 1, 5), atol=1e-6)  # the offset moves on


def test_sources_and_batches():
    cpu = ImageNoise((4, 8, 8), [7, 8], source="CPU")
    first = cpu.next()
    assert torch.equal(first[1], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(8)))
    # Step noise continues each image's generator; an image's noise does not depend on its batch.
    generator = torch.Generator().manual_seed(7)
    torch.randn((4, 8, 8), generator=generator)
    assert torch.equal(cpu.next()[0], torch.randn((4, 8, 8), generator=generator))
    alone = ImageNoise((4, 8, 8), [8], source="NV")
    batch = ImageNoise((4, 8, 8), [7, 8], source="NV")
    assert torch.equal(alone.next()[0], batch.next()[1]) and torch.equal(alone.next()[0], batch.next()[1])
    assert torch.equal(ImageNoise((4, 8, 8), [8], source="GPU").next(), ImageNoise((4, 8, 8), [8], source="NV").next())


def test_eta_noise_seed_delta_reseeds_after_the_starting_noise():
    noise = ImageNoise((4, 8, 8), [7], source="CPU", eta_noise_seed_delta=31337)
    assert torch.equal(noise.next()[0], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(7)))
    step = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(7 + 31337))
    assert torch.equal(noise.next()[0], step)


def _a1111_slerp(val, low, high):
    """A1111's formula restated: per (channel, column) along the rows; linear (as written there)
    when nearly parallel."""
    low_unit = low / low.norm(dim=1, keepdim=True)
    high_unit = high / high.norm(dim=1, keepdim=True)
    dot = (low_unit * high_unit).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = dot.acos()
    return (((1 - val) * omega).sin() / omega.sin())[:, None] * low + ((val * omega).sin() / omega.sin())[:, None] * high


def test_variation_seed_and_resize_as_a1111():
    def draw(seed, shape):
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    mixed = ImageNoise((4, 8, 8), [10, 11], [20, 21], subseed_strength=0.3, source="CPU").next()
    for i in range(2):
        assert torch.allclose(mixed[i], _a1111_slerp(0.3, draw(10 + i, (4, 8, 8)), draw(20 + i, (4, 8, 8))), atol=1e-6)
    same = torch.ones(4, 8, 8)
    assert torch.equal(slerp(0.25, same, same * 2), same * 0.25 + same * 2 * 0.75)  # A1111's own fallback
    # Resize seed from 40x88 (pixels) to an 8x16 latent: the old noise (5x11) pasted at row 1
    # (floor((8 - 5) / 2)), column 2; a larger old size is cropped by the same floor arithmetic.
    for source_size, new_shape in (((40, 88), (4, 8, 16)), ((104, 72), (4, 8, 8))):
        got = ImageNoise(new_shape, [5], [6], subseed_strength=0.5, seed_resize_from=source_size, source="CPU").next()[0]
        small_shape = (4, source_size[0] // 8, source_size[1] // 8)
        small = _a1111_slerp(0.5, draw(5, small_shape), draw(6, small_shape))
        full = draw(5, new_shape)
        dy, dx = (new_shape[1] - small_shape[1]) // 2, (new_shape[2] - small_shape[2]) // 2
        h = small_shape[1] if dy >= 0 else small_shape[1] + 2 * dy
        w = small_shape[2] if dx >= 0 else small_shape[2] + 2 * dx
        full[:, max(dy, 0):max(dy, 0) + h, max(dx, 0):max(dx, 0) + w] = \
            small[:, max(-dy, 0):max(-dy, 0) + h, max(-dx, 0):max(-dx, 0) + w]
        assert torch.allclose(got, full, atol=1e-6)


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
