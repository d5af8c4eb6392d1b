"""The noise of a generation job against independent references: the Philox core against
Random123's published known answers; the NV generator against a plain-integer restatement of
the algorithm and against CUDA output printed in public; and ImageNoise (A1111's ImageRNG)
against torch's own generators and restatements of A1111's variation blend and its
"resize seed from" paste, written here from their descriptions."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from engine.sampling.noise import RANDN_SOURCES, ImageNoise, draw_method, slerp
from engine.sampling.philox import PhiloxGenerator, philox4x32

# Random123 tests/kat_vectors (DEShawResearch/random123 at 9545ff64, lines 24-29):
# rounds, counter (4 words), key (2 words) -> output (4 words).
RANDOM123_KAT = [
    (7, (0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


# --- An independent Philox4x32 + Box-Muller in plain Python integers and floats. ---

def _mulhilo(a: int, b: int) -> tuple[int, int]:
    product = a * b
    return product >> 32, product & 0xFFFFFFFF


def _reference_philox(counter: tuple[int, ...], key: tuple[int, ...], rounds: int) -> tuple[int, ...]:
    """Salmon et al.'s Philox4x32: S-box round with the two multipliers, key bumped by the
    golden-ratio and sqrt(3)-1 Weyl constants before every round but the first."""
    x0, x1, x2, x3 = counter
    k0, k1 = key
    for round_number in range(rounds):
        if round_number > 0:
            k0 = (k0 + 0x9E3779B9) % 2**32
            k1 = (k1 + 0xBB67AE85) % 2**32
        hi0, lo0 = _mulhilo(0xD2511F53, x0)
        hi1, lo1 = _mulhilo(0xCD9E8D57, x2)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
    return x0, x1, x2, x3


def _reference_normal(seed: int, call: int, index: int) -> float:
    """Element `index` of the `call`-th randn of a CUDA generator seeded with `seed`: cuRAND's
    curand_init(seed, subsequence=index, offset=4*call) counter, the first Box-Muller output.
    The float32 constants of cuRAND, the rest in double, rounded to float32 (A1111's NV)."""
    words = _reference_philox((call, 0, index % 2**32, index >> 32), (seed % 2**32, seed >> 32), 10)
    step = float(np.float32(2.3283064e-10))
    step_2pi = float(np.float32(2.3283064e-10 * 6.2831855))
    u = words[0] * step + step / 2
    angle = words[1] * step_2pi + step_2pi / 2
    return float(np.float32(math.sqrt(-2.0 * math.log(u)) * math.sin(angle)))


@pytest.mark.parametrize("rounds, counter, key, expected", RANDOM123_KAT)
def test_philox_core_gives_random123s_known_answers(rounds, counter, key, expected):
    out = philox4x32(np.array(counter, dtype=np.uint32)[:, None], np.array(key, dtype=np.uint32), rounds=rounds)
    assert tuple(int(word) for word in out[:, 0]) == expected
    assert _reference_philox(counter, key, rounds) == expected  # the test's own reference too


def test_philox_core_takes_a_key_per_column():
    counters = np.array([c for _, c, _, _ in RANDOM123_KAT[3:]], dtype=np.uint32).T
    keys = np.array([k for _, _, k, _ in RANDOM123_KAT[3:]], dtype=np.uint32).T
    out = philox4x32(counters, keys)
    assert [tuple(int(w) for w in out[:, i]) for i in range(3)] == [e for _, _, _, e in RANDOM123_KAT[3:]]


@pytest.mark.parametrize("seed", [0, 2**32 + 12345, 0xDEADBEEFCAFEF00D])
def test_nv_generator_matches_the_plain_restatement_over_two_calls(seed):
    generator = PhiloxGenerator(seed)
    first, second = generator.randn((3, 5)), generator.randn((7,))
    assert first.dtype == np.float32 and first.shape == (3, 5)
    assert first.reshape(-1).tolist() == [_reference_normal(seed, 0, i) for i in range(15)]
    assert second.tolist() == [_reference_normal(seed, 1, i) for i in range(7)]  # the offset moved on


def test_nv_generator_is_fast_enough_for_a_1024px_latent():
    started = time.perf_counter()
    noise = PhiloxGenerator(1).randn((4, 128, 128))
    assert time.perf_counter() - started < 1.0  # about 10 ms here
    assert noise.shape == (4, 128, 128) and abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02


# --- Real CUDA output printed in public (four decimals as torch prints them). ---

# github.com/kapilsh/cuda-mode-lecture (GPU MODE lecture on fused kernels), FusedKernels.ipynb:
# get_inputs() in kernels/triton_fused_add_mul_activation.py runs torch.manual_seed(0), then
# torch.randn((8, 8)), torch.randn((8, 8)) and torch.randn((1, 8)), float32 on "cuda". The
# notebook prints the first draw ("Input") and relu(first + 0.5 * second + third)
# ("Expected Output"), which checks the second and third calls too.
KAPILSH_FIRST = [
    [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284],
    [-1.0745, -0.3631, -1.6711, 2.2655, 0.3117, -0.1842, 1.2866, 1.1820],
    [-0.1271, 1.2169, 1.4353, 1.0605, -0.4941, -1.4244, -0.7244, -1.2973],
    [0.0697, -0.0074, 1.8969, 0.6878, -0.0779, -0.8373, 1.3506, -0.2879],
    [-0.5965, -0.3283, -0.9086, -0.8059, -0.7407, -0.0504, 0.5435, 1.5150],
    [0.0141, 0.4532, 1.6349, 0.7124, -0.1806, 1.0252, -1.4622, -0.7554],
    [-0.1836, 0.3824, 0.3918, -0.0830, 0.8971, -1.1123, 0.1116, 0.4863],
    [-0.5499, -0.3231, -0.5469, 0.9049, 0.2837, 0.1210, 0.4730, -1.0823],
]
KAPILSH_RELU = [
    [1.7098e+00, 0, 0, 0, 6.7049e-01, 0, 3.4424e-01, 1.1223e-02],
    [1.8750e+00, 0, 0, 2.2105e+00, 6.6808e-01, 0, 1.8445e+00, 1.9246e+00],
    [2.2614e+00, 1.3964e+00, 5.1802e-01, 2.0114e+00, 0, 0, 2.7715e-01, 0],
    [2.4750e+00, 0, 1.9079e+00, 5.4869e-01, 3.7923e-01, 0, 3.1791e+00, 6.6843e-01],
    [1.8234e+00, 0, 1.1147e-01, 0, 0, 0, 2.4250e+00, 3.2593e+00],
    [2.2903e+00, 0, 1.1721e+00, 6.9331e-01, 1.0583e+00, 6.7518e-01, 0, 2.6185e-01],
    [1.5804e+00, 0, 9.0740e-01, 1.6670e-01, 5.5230e-02, 0, 1.5325e+00, 3.5984e-01],
    [1.5554e+00, 0, 0, 9.4380e-01, 2.9795e-03, 7.4125e-02, 1.6286e+00, 0],
]
# Printed values are rounded to 4 decimals; CUDA's fast __logf/__sincosf add about 1e-6.
PRINTED = 6e-5

# (source, seed, shape, flat indices, printed values). Indices stay below one wave of threads of
# the card that printed them, where CUDA's stream does not depend on the card.
PUBLISHED_CUDA_DRAWS = [
    # github.com/pytorch/pytorch/issues/79496: torch.manual_seed(10); torch.randn(3, device=cuda)
    ("pytorch#79496", 10, (3,), [0, 1, 2], [-0.1029, 1.6810, -0.2708]),
    # github.com/pytorch/pytorch/issues/158398: torch.randn([1, 64, 2048], generator=
    # torch.Generator(device).manual_seed(42), device=cuda); rows 0-2, first and last three
    ("pytorch#158398", 42, (1, 64, 2048),
     [0, 1, 2, 2045, 2046, 2047, 2048, 2049, 2050, 4093, 4094, 4095, 4096, 4097, 4098, 6141, 6142, 6143],
     [0.1940, 2.1614, -0.1721, 1.4540, -2.7733, -0.8932, -0.4574, 0.8063, 0.1580, 0.1124, 0.2769, -1.2535,
      1.1346, -0.6329, -0.9147, -1.0001, -1.1552, -0.6955]),
    # github.com/pytorch/pytorch/issues/62467: normal_ of a (1, 3, 128, 128) tensor with a cuda
    # generator seeded 43 on an RTX A6000; noise0[..., 0, 0], i.e. one value per channel
    ("pytorch#62467", 43, (1, 3, 128, 128), [0, 16384, 32768], [1.9983, 0.8704, 2.1127]),
]


def test_nv_reproduces_cuda_randn_as_printed_in_a_lecture_notebook():
    generator = PhiloxGenerator(0)
    first, second, third = generator.randn((8, 8)), generator.randn((8, 8)), generator.randn((1, 8))
    np.testing.assert_allclose(first, KAPILSH_FIRST, atol=PRINTED, rtol=0)
    np.testing.assert_allclose(np.maximum(first + 0.5 * second + third, 0), KAPILSH_RELU, atol=PRINTED, rtol=0)


@pytest.mark.parametrize("source, seed, shape, indices, printed", PUBLISHED_CUDA_DRAWS,
                         ids=[entry[0] for entry in PUBLISHED_CUDA_DRAWS])
def test_nv_reproduces_cuda_randn_printed_in_pytorch_issues(source, seed, shape, indices, printed):
    noise = PhiloxGenerator(seed).randn(shape).reshape(-1)
    np.testing.assert_allclose(noise[indices], printed, atol=PRINTED, rtol=0)


def test_nv_agrees_with_a1111s_documented_output_to_a_millionth():
    """A1111's rng_philox.py documents Generator(seed=0).randn((3, 4)) to 8 digits; those digits
    differ from its own float64 arithmetic by up to 2.4e-7, as CUDA's fast intrinsics would."""
    documented = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                  [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                  [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]
    np.testing.assert_allclose(PhiloxGenerator(0).randn((3, 4)), documented, atol=1e-6, rtol=0)


# --- Sources. ---

def _cpu_draws(seed: int, shape, count: int) -> list[torch.Tensor]:
    generator = torch.Generator("cpu").manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


def _nv_draws(seed: int, shape, count: int) -> list[torch.Tensor]:
    generator = PhiloxGenerator(seed)
    return [torch.from_numpy(generator.randn(shape)) for _ in range(count)]


def test_draw_methods_and_unknown_sources():
    assert RANDN_SOURCES == ("GPU", "CPU", "NV")
    assert draw_method("GPU", "cpu") == "nv" and draw_method("GPU", torch.device("cuda:0")) == "cuda"
    assert draw_method("GPU", "mps") == "nv"
    assert draw_method("CPU", "cuda") == "cpu" and draw_method("NV", "cuda") == "nv"
    with pytest.raises(ValueError, match="GPU, CPU, NV"):
        draw_method("TPU", "cpu")
    with pytest.raises(ValueError):
        ImageNoise((4, 8, 8), [1], source="gpu")


@pytest.mark.parametrize("source, reference", [("CPU", _cpu_draws), ("NV", _nv_draws), ("GPU", _nv_draws)])
def test_each_image_draws_its_own_stream(source, reference):
    noise = ImageNoise((4, 8, 6), [7, 8], source=source)
    draws = [noise.next() for _ in range(3)]
    for image, seed in enumerate((7, 8)):
        expected = reference(seed, (4, 8, 6), 3)
        for call in range(3):
            assert draws[call].shape == (2, 4, 8, 6) and draws[call].dtype == torch.float32
            assert torch.equal(draws[call][image], expected[call])


@pytest.mark.parametrize("source", RANDN_SOURCES)
def test_an_image_does_not_depend_on_its_batch(source):
    batch = ImageNoise((4, 8, 8), [3, 4, 5], subseeds=[50, 51, 52], subseed_strength=0.4, source=source)
    alone = ImageNoise((4, 8, 8), [4], subseeds=[51], subseed_strength=0.4, source=source)
    for _ in range(3):
        assert torch.equal(batch.next()[1], alone.next()[0])


def test_noise_sampler_and_first_hand_out_the_same_stream():
    noise = ImageNoise((4, 8, 8), [9], source="CPU")
    expected = _cpu_draws(9, (4, 8, 8), 3)
    assert torch.equal(noise.first()[0], expected[0])
    sampler = noise.noise_sampler()
    assert torch.equal(sampler(torch.tensor(1.0), torch.tensor(0.5))[0], expected[1])
    assert torch.equal(noise.next()[0], expected[2])


@pytest.mark.parametrize("source, reference", [("CPU", _cpu_draws), ("NV", _nv_draws)])
def test_eta_noise_seed_delta_reseeds_the_step_noise_only(source, reference):
    noise = ImageNoise((4, 8, 8), [7, 100], source=source, eta_noise_seed_delta=31337)
    first, step1, step2 = noise.next(), noise.next(), noise.next()
    for image, seed in enumerate((7, 100)):
        assert torch.equal(first[image], reference(seed, (4, 8, 8), 1)[0])
        delta_stream = reference(seed + 31337, (4, 8, 8), 2)
        assert torch.equal(step1[image], delta_stream[0]) and torch.equal(step2[image], delta_stream[1])


# --- Variation seed: the blend restated per (channel, column) in float64. ---

def _reference_blend(strength: float, seed_noise: torch.Tensor, sub_noise: torch.Tensor) -> torch.Tensor:
    """A1111's slerp read as: per channel c and column w, the angle between the row vectors
    seed[c, :, w] and sub[c, :, w]; sin((1-t)a)/sin(a) * seed + sin(t a)/sin(a) * sub. If the
    cosines average above 0.9995, the linear seed * t + sub * (1 - t) instead."""
    a = seed_noise.double().numpy()
    b = sub_noise.double().numpy()
    channels, _, columns = a.shape
    cosines = np.empty((channels, columns))
    for c in range(channels):
        for w in range(columns):
            cosines[c, w] = a[c, :, w] @ b[c, :, w] / (np.linalg.norm(a[c, :, w]) * np.linalg.norm(b[c, :, w]))
    if cosines.mean() > 0.9995:
        return torch.from_numpy(a * strength + b * (1 - strength))
    out = np.empty_like(a)
    for c in range(channels):
        for w in range(columns):
            angle = math.acos(cosines[c, w])
            out[c, :, w] = (math.sin((1 - strength) * angle) * a[c, :, w] + math.sin(strength * angle) * b[c, :, w]) \
                / math.sin(angle)
    return torch.from_numpy(out)


def test_slerp_matches_the_restated_blend_and_its_linear_fallback():
    low, high = _cpu_draws(1, (4, 6, 5), 1)[0], _cpu_draws(2, (4, 6, 5), 1)[0]
    blended = slerp(0.3, low, high)
    torch.testing.assert_close(blended.double(), _reference_blend(0.3, low, high), atol=2e-6, rtol=0)
    near = low + 1e-3 * high  # nearly parallel: A1111's linear formula with its weights as written
    torch.testing.assert_close(slerp(0.25, low, near), low * 0.25 + near * 0.75, atol=0, rtol=0)
    torch.testing.assert_close(slerp(0.25, low, near).double(), _reference_blend(0.25, low, near), atol=1e-6, rtol=0)


@pytest.mark.parametrize("source, reference", [("CPU", _cpu_draws), ("NV", _nv_draws)])
def test_variation_seed_blends_a_fresh_subseed_draw_into_the_images_own(source, reference):
    noise = ImageNoise((4, 8, 8), [10, 11, 12], subseeds=[20, 21], subseed_strength=0.3, source=source)
    first, step = noise.next(), noise.next()
    for image, (seed, subseed) in enumerate(((10, 20), (11, 21), (12, 0))):  # past the list: subseed 0
        own = reference(seed, (4, 8, 8), 2)
        expected = _reference_blend(0.3, own[0], reference(subseed, (4, 8, 8), 1)[0])
        torch.testing.assert_close(first[image].double(), expected, atol=2e-6, rtol=0)
        assert torch.equal(step[image], own[1])  # the subseed draw left the image's stream alone
    unblended = ImageNoise((4, 8, 8), [10], subseeds=[20], subseed_strength=0.0, source=source).next()
    assert torch.equal(unblended[0], reference(10, (4, 8, 8), 1)[0])


# --- Resize seed from: A1111's centring, worked out by hand per axis. ---

# (new latent size, old latent size) -> (first new index, first old index, count), from
# shift = floor((new - old) / 2): new 8, old 13 gives shift -3, so old rows 3..9 land on rows
# 0..6 and row 7 keeps the full-size draw; new 9, old 4 gives shift 2 (floor of 2.5).
HAND_SPANS = {
    (8, 5): (1, 0, 5),
    (8, 13): (0, 3, 7),
    (8, 12): (0, 2, 8),
    (9, 4): (2, 0, 4),
    (8, 6): (1, 0, 6),
    (9, 15): (0, 3, 9),
}


def _reference_paste(old: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Element by element: each new position inside the hand-worked window takes the old
    position it maps to, every other keeps the full-size draw."""
    to_y, from_y, rows = HAND_SPANS[(full.shape[1], old.shape[1])]
    to_x, from_x, columns = HAND_SPANS[(full.shape[2], old.shape[2])]
    out = full.clone()
    for y in range(full.shape[1]):
        for x in range(full.shape[2]):
            if to_y <= y < to_y + rows and to_x <= x < to_x + columns:
                out[:, y, x] = old[:, y - to_y + from_y, x - to_x + from_x]
    return out


# (latent shape, resize from (height, width) in pixels): larger, smaller, odd differences, and
# pixel sizes that are not multiples of 8 (A1111 floors them).
RESIZE_CASES = [
    ((4, 8, 8), (104, 40)),  # old 13 x 5: crop rows by 3 (odd), pad columns by 1
    ((4, 9, 8), (32, 96)),  # old 4 x 12: rows at 2, crop columns by 2
    ((4, 8, 8), (100, 53)),  # old 12 x 6
    ((4, 9, 8), (127, 47)),  # old 15 x 5
]


@pytest.mark.parametrize("source, reference", [("CPU", _cpu_draws), ("NV", _nv_draws)])
@pytest.mark.parametrize("shape, resize_from", RESIZE_CASES)
def test_resize_seed_from_pastes_the_old_sizes_noise_centred(source, reference, shape, resize_from):
    old_shape = (shape[0], resize_from[0] // 8, resize_from[1] // 8)
    noise = ImageNoise(shape, [5, 6], seed_resize_from=resize_from, source=source)
    first, step = noise.next(), noise.next()
    for image, seed in enumerate((5, 6)):
        own = reference(seed, shape, 2)
        expected = _reference_paste(reference(seed, old_shape, 1)[0], own[0])
        assert torch.equal(first[image], expected)
        assert torch.equal(step[image], own[1])  # after exactly one full-size draw


@pytest.mark.parametrize("shape, resize_from", RESIZE_CASES)
def test_variation_and_resize_blend_at_the_old_size_then_paste(shape, resize_from):
    old_shape = (shape[0], resize_from[0] // 8, resize_from[1] // 8)
    noise = ImageNoise(shape, [5], subseeds=[77], subseed_strength=0.6, seed_resize_from=resize_from, source="CPU")
    blended = _reference_blend(0.6, _cpu_draws(5, old_shape, 1)[0], _cpu_draws(77, old_shape, 1)[0]).float()
    expected = _reference_paste(blended, _cpu_draws(5, shape, 1)[0])
    torch.testing.assert_close(noise.next()[0], expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("resize_from", [None, (0, 0), (64, 0), (64, 64), (70, 67)])
def test_no_resize_when_unset_or_the_same_latent_size(resize_from):
    noise = ImageNoise((4, 8, 8), [5], seed_resize_from=resize_from, source="NV").next()
    assert torch.equal(noise[0], _nv_draws(5, (4, 8, 8), 1)[0])


# --- On a CUDA machine. ---

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_gpu_noise_is_the_cuda_generators_and_other_sources_arrive_there():
    cuda = ImageNoise((4, 8, 8), [7], source="GPU", device="cuda")
    first, step = cuda.next(), cuda.next()
    assert first.device.type == "cuda" and step.device.type == "cuda"
    expected = _nv_draws(7, (4, 8, 8), 2)
    torch.testing.assert_close(first.cpu()[0], expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(step.cpu()[0], expected[1], atol=1e-5, rtol=0)
    cpu = ImageNoise((4, 8, 8), [7], source="CPU", device="cuda")
    first, step = cpu.next(), cpu.next()
    assert first.device.type == "cuda"
    assert torch.equal(first.cpu()[0], _cpu_draws(7, (4, 8, 8), 1)[0])
    assert torch.equal(step.cpu()[0], _cpu_draws(7, (4, 8, 8), 2)[1])
