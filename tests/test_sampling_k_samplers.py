"""Our sigma-based sampler functions against the code A1111 1.10 runs: k-diffusion 0.1.1's
sampler functions (loaded as a test-only reference) driven the way A1111 drives them. (A1111's own
Restart and LCM samplers, which k-diffusion lacks: tests/test_sampling_restart_lcm.py, on the toy
model and randomness defined here.)

Both sides get the same deterministic toy denoiser (a fixed convolution under a smooth
nonlinearity, epsilon-parameterised like SD), the same schedules (Karras and exponential over
SD 1.x's sigma range, an img2img-like schedule that starts mid-way, one with the penultimate
sigma dropped) and the same randomness: the ancestral samplers' step noise comes from one
sequence of draws, which k-diffusion receives as A1111 arranges it (its module's `torch` replaced
by a stand-in whose `randn_like` pops the next draw, like A1111's TorchHijack); the SDE samplers
get Brownian trees seeded with the image seeds. Final latents must agree within a relative
difference of 1e-5 and are in fact required to be bit-identical (same float32 operations in the
same order); both sides must consume the same number of step-noise draws and report the same
steps to the callback.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from engine.sampling import k_samplers as ours
from engine.sampling.brownian import BrownianNoise
from tests.support import kdiffusion_ref

TOLERANCE = 1e-5
SHAPE = (2, 4, 8, 8)
SEEDS = (1234, 98765)
SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6146  # SD 1.x
MEASURED: dict[str, float] = {}  # the largest relative difference seen per sampler (printed with -s)


@pytest.fixture(scope="module")
def sampling():
    try:
        return kdiffusion_ref.load()[0]
    except ImportError as error:  # pragma: no cover - the reference is a test requirement
        pytest.skip(str(error))


@pytest.fixture(scope="module", autouse=True)
def print_measurements():
    yield
    if MEASURED:
        print("\nlargest relative difference to the reference per sampler:")
        for name, value in sorted(MEASURED.items()):
            print(f"  {name:34s} {value:.3e}")


# --- the toy model and the shared randomness -----------------------------------------------------


class ToyDenoiser:
    """Deterministic epsilon-prediction stand-in for a UNet: a fixed 3x3 convolution of the
    c_in-scaled latents, squashed by tanh, plus a smooth function of sigma; denoised = x - sigma
    eps. Each image is handled independently, as with a real model."""

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn((SHAPE[1], SHAPE[1], 3, 3), generator=generator) * 0.35
        self.bias = torch.randn((SHAPE[1],), generator=generator) * 0.1
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],) and x.dtype == torch.float32
        self.calls += 1
        s = sigma.view(-1, 1, 1, 1)
        scaled = x / (s ** 2 + 1) ** 0.5
        eps = torch.tanh(F.conv2d(scaled, self.weight, self.bias, padding=1)) * 0.9 + 0.1 * torch.sin(s)
        return x - eps * s


class StepNoise:
    """One fixed sequence of unit-normal draws (what A1111's per-image generators would give),
    handed out in order, counting how many were taken."""

    def __init__(self, seed: int = 77):
        self.generator = torch.Generator().manual_seed(seed)
        self.used = 0

    def next(self) -> torch.Tensor:
        self.used += 1
        return torch.randn(SHAPE, generator=self.generator)

    def sampler(self):
        return lambda sigma, sigma_next: self.next()


class HijackedTorch:
    """A1111's stand-in for k-diffusion's `torch`: randn_like gives the next step noise."""

    def __init__(self, noise: StepNoise):
        self.noise = noise

    def randn_like(self, x):
        draw = self.noise.next()
        assert draw.shape == x.shape
        return draw

    def __getattr__(self, name):
        return getattr(torch, name)


@contextmanager
def as_a1111_runs(sampling, noise: StepNoise):
    """k-diffusion as A1111 patches it: randn_like from the images' noise, and `to_d` as a plain
    division by the scalar sigma."""
    saved_torch, saved_to_d = sampling.torch, sampling.to_d
    sampling.torch = HijackedTorch(noise)
    sampling.to_d = lambda x, sigma, denoised: (x - denoised) / sigma
    try:
        yield
    finally:
        sampling.torch, sampling.to_d = saved_torch, saved_to_d


# --- schedules and starting points ---------------------------------------------------------------


def karras(sampling, n=10):
    return sampling.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX)


def exponential(sampling, n=10):
    return sampling.get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX)


def img2img(sampling):
    return karras(sampling, 10)[4:]  # an img2img pass: the last steps of the full schedule


def discarded(sampling):
    full = karras(sampling, 11)
    return torch.cat([full[:-2], full[-1:]])  # A1111's discard_next_to_last_sigma


SCHEDULES: dict[str, Callable] = {"karras": karras, "exponential": exponential, "img2img": img2img,
                                  "discarded": discarded}


def start_latents(sigmas: torch.Tensor, seed: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    init = torch.randn(SHAPE, generator=generator) * 0.5
    return init + torch.randn(SHAPE, generator=generator) * sigmas[0]


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def assert_matches(name: str, mine: torch.Tensor, theirs: torch.Tensor) -> None:
    """Within the tolerance, and in fact bit for bit: both sides run the same float32 operations
    in the same order on the same machine, so any other difference means our order of
    arithmetic drifted from A1111's."""
    difference = relative_difference(mine, theirs)
    MEASURED[name] = max(MEASURED.get(name, 0.0), difference)
    assert difference < TOLERANCE, f"{name}: relative difference {difference:.2e}"
    assert torch.equal(mine, theirs), f"{name}: not bit-identical (relative difference {difference:.2e})"


class Recorder:
    """Keeps what each callback call received."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, info: dict) -> None:
        self.calls.append({key: (value.clone() if torch.is_tensor(value) else value) for key, value in info.items()})


def assert_same_callbacks(mine: Recorder, theirs: Recorder, keys=("sigma", "sigma_hat")) -> None:
    assert [c["i"] for c in mine.calls] == [c["i"] for c in theirs.calls]
    for a, b in zip(mine.calls, theirs.calls):
        assert relative_difference(a["denoised"], b["denoised"]) < TOLERANCE
        assert relative_difference(a["x"], b["x"]) < TOLERANCE
        for key in keys:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6)


# --- the samplers over a sigma list --------------------------------------------------------------

# (our function, k-diffusion's name, keyword arguments A1111 could pass, noise kind)
STEP, BROWNIAN = "step noise", "brownian"
CASES = {
    "euler": (ours.sample_euler, "sample_euler", {}, STEP),
    "euler churn": (ours.sample_euler, "sample_euler",
                    {"s_churn": 2.5, "s_tmin": 0.1, "s_tmax": 10.0, "s_noise": 0.9}, STEP),
    "euler a": (ours.sample_euler_ancestral, "sample_euler_ancestral", {}, STEP),
    "euler a eta 0.5": (ours.sample_euler_ancestral, "sample_euler_ancestral", {"eta": 0.5, "s_noise": 0.9}, STEP),
    "euler a eta 0": (ours.sample_euler_ancestral, "sample_euler_ancestral", {"eta": 0.0}, STEP),
    "heun": (ours.sample_heun, "sample_heun", {}, STEP),
    "heun churn": (ours.sample_heun, "sample_heun", {"s_churn": 1.0, "s_noise": 0.9}, STEP),
    "dpm2": (ours.sample_dpm_2, "sample_dpm_2", {}, STEP),
    "dpm2 churn": (ours.sample_dpm_2, "sample_dpm_2", {"s_churn": 3.0, "s_tmin": 0.5, "s_noise": 0.9}, STEP),
    "dpm2 a": (ours.sample_dpm_2_ancestral, "sample_dpm_2_ancestral", {}, STEP),
    "dpm2 a eta 0.5": (ours.sample_dpm_2_ancestral, "sample_dpm_2_ancestral", {"eta": 0.5, "s_noise": 0.9}, STEP),
    "dpm2 a eta 3": (ours.sample_dpm_2_ancestral, "sample_dpm_2_ancestral", {"eta": 3.0}, STEP),
    "lms": (ours.sample_lms, "sample_lms", {}, STEP),
    "lms order 2": (ours.sample_lms, "sample_lms", {"order": 2}, STEP),
    "dpm++ 2s a": (ours.sample_dpmpp_2s_ancestral, "sample_dpmpp_2s_ancestral", {}, STEP),
    "dpm++ 2s a eta 0.5": (ours.sample_dpmpp_2s_ancestral, "sample_dpmpp_2s_ancestral",
                           {"eta": 0.5, "s_noise": 0.9}, STEP),
    "dpm++ 2m": (ours.sample_dpmpp_2m, "sample_dpmpp_2m", {}, STEP),
    "dpm++ sde": (ours.sample_dpmpp_sde, "sample_dpmpp_sde", {}, BROWNIAN),
    "dpm++ sde eta 0.5": (ours.sample_dpmpp_sde, "sample_dpmpp_sde", {"eta": 0.5, "s_noise": 0.9}, BROWNIAN),
    "dpm++ sde eta 0": (ours.sample_dpmpp_sde, "sample_dpmpp_sde", {"eta": 0.0}, BROWNIAN),
    "dpm++ 2m sde": (ours.sample_dpmpp_2m_sde, "sample_dpmpp_2m_sde", {}, BROWNIAN),
    "dpm++ 2m sde eta 0.5": (ours.sample_dpmpp_2m_sde, "sample_dpmpp_2m_sde", {"eta": 0.5, "s_noise": 0.9}, BROWNIAN),
    "dpm++ 2m sde heun": (ours.sample_dpmpp_2m_sde, "sample_dpmpp_2m_sde", {"solver_type": "heun"}, BROWNIAN),
    "dpm++ 2m sde heun eta 0.5": (ours.sample_dpmpp_2m_sde, "sample_dpmpp_2m_sde",
                                  {"solver_type": "heun", "eta": 0.5, "s_noise": 0.9}, BROWNIAN),
    "dpm++ 2m sde eta 0": (ours.sample_dpmpp_2m_sde, "sample_dpmpp_2m_sde", {"eta": 0.0}, BROWNIAN),
    "dpm++ 3m sde": (ours.sample_dpmpp_3m_sde, "sample_dpmpp_3m_sde", {}, BROWNIAN),
    "dpm++ 3m sde eta 0.5": (ours.sample_dpmpp_3m_sde, "sample_dpmpp_3m_sde", {"eta": 0.5, "s_noise": 0.9}, BROWNIAN),
    "dpm++ 3m sde eta 0": (ours.sample_dpmpp_3m_sde, "sample_dpmpp_3m_sde", {"eta": 0.0}, BROWNIAN),
}


def brownian_pair(sampling, x, sigmas):
    """Our Brownian noise and k-diffusion's, as A1111 creates it: over the positive range of the
    job's sigmas, one tree per image seed."""
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return (BrownianNoise(x, sigma_min, sigma_max, SEEDS),
            sampling.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=list(SEEDS)))


def run_both(sampling, case: str, sigmas: torch.Tensor):
    function, reference_name, kwargs, noise_kind = CASES[case]
    model = ToyDenoiser()
    x = start_latents(sigmas)
    my_noise, their_noise = StepNoise(), StepNoise()
    my_calls, their_calls = Recorder(), Recorder()
    reference_kwargs = dict(kwargs)
    if noise_kind == BROWNIAN:
        my_sampler, reference_kwargs["noise_sampler"] = brownian_pair(sampling, x, sigmas)
    else:
        my_sampler = my_noise.sampler()  # k-diffusion draws through the patched torch, as in A1111
    with warnings.catch_warnings(record=True) as caught:
        mine = function(model, x.clone(), sigmas, noise_sampler=my_sampler, callback=my_calls, **kwargs)
    assert not [w for w in caught if "Should have" in str(w.message)]  # torchsde clamps quietly for us
    with as_a1111_runs(sampling, their_noise), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchsde's clamping notices under k-diffusion
        theirs = getattr(sampling, reference_name)(model, x.clone(), sigmas, callback=their_calls,
                                                   disable=True, **reference_kwargs)
    return mine, theirs, (my_noise.used, their_noise.used), (my_calls, their_calls)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("case", list(CASES))
def test_sampler_matches_k_diffusion(sampling, case, schedule):
    sigmas = SCHEDULES[schedule](sampling)
    mine, theirs, (my_draws, their_draws), (my_calls, their_calls) = run_both(sampling, case, sigmas)
    assert_matches(case, mine, theirs)
    assert my_draws == their_draws, "step-noise draws differ in number"
    assert len(my_calls.calls) == len(sigmas) - 1
    assert_same_callbacks(my_calls, their_calls)


def test_noise_is_drawn_when_a1111_draws_it(sampling):
    """Euler draws a churn noise every step even without churn; Euler a draws on every step but
    the last; DPM2 a with an eta large enough to land on 0 draws nothing there."""
    sigmas = karras(sampling)
    steps = len(sigmas) - 1
    assert run_both(sampling, "euler", sigmas)[2] == (steps, steps)
    assert run_both(sampling, "euler a", sigmas)[2] == (steps - 1, steps - 1)
    draws = run_both(sampling, "dpm2 a eta 3", sigmas)[2]
    assert draws[0] == draws[1] < steps - 1


# --- DPM fast and adaptive -----------------------------------------------------------------------

FAST_CASES = {
    "dpm fast n10": {"n": 10},
    "dpm fast n9 eta 1": {"n": 9, "eta": 1.0},
    "dpm fast n11 eta 0.5": {"n": 11, "eta": 0.5, "s_noise": 0.9},
    "dpm fast n2 eta 1": {"n": 2, "eta": 1.0},
}
ADAPTIVE_CASES = {
    "dpm adaptive": {},
    "dpm adaptive eta 1": {"eta": 1.0},
    "dpm adaptive eta 0.5": {"eta": 0.5, "s_noise": 0.9},
    "dpm adaptive order 2": {"order": 2, "eta": 1.0},
    "dpm adaptive pid": {"pcoeff": 0.3, "icoeff": 0.9, "dcoeff": 0.2, "rtol": 0.02, "eta": 1.0},
}


def noise_ranges(sampling):
    """txt2img: the model's range as Python floats; img2img: the schedule's ends as tensors."""
    schedule = img2img(sampling)
    return {"txt2img": (SIGMA_MIN, SIGMA_MAX), "img2img": (schedule[-2], schedule[0])}


def run_dpm_solver(sampling, our_function, reference_name, sigma_range, *args, **kwargs):
    model = ToyDenoiser()
    x = start_latents(torch.tensor([float(sigma_range[1])]))
    my_noise, their_noise = StepNoise(), StepNoise()
    my_calls, their_calls = Recorder(), Recorder()
    mine = our_function(model, x.clone(), *sigma_range, *args, noise_sampler=my_noise.sampler(),
                        callback=my_calls, **kwargs)
    with as_a1111_runs(sampling, their_noise), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # k-diffusion's torch.tensor(tensor)
        theirs = getattr(sampling, reference_name)(model, x.clone(), *sigma_range, *args, callback=their_calls,
                                                   disable=True, **kwargs)
    assert my_noise.used == their_noise.used
    assert_same_callbacks(my_calls, their_calls, keys=("sigma", "sigma_hat", "t", "t_up"))
    return mine, theirs, my_calls


@pytest.mark.parametrize("where", ["txt2img", "img2img"])
@pytest.mark.parametrize("case", list(FAST_CASES))
def test_dpm_fast_matches_k_diffusion(sampling, case, where):
    kwargs = dict(FAST_CASES[case])
    n = kwargs.pop("n")
    mine, theirs, calls = run_dpm_solver(sampling, ours.sample_dpm_fast, "sample_dpm_fast",
                                         noise_ranges(sampling)[where], n, **kwargs)
    assert len(calls.calls) == math.floor(n / 3) + 1
    assert_matches(case, mine, theirs)


@pytest.mark.parametrize("where", ["txt2img", "img2img"])
@pytest.mark.parametrize("case", list(ADAPTIVE_CASES))
def test_dpm_adaptive_matches_k_diffusion(sampling, case, where):
    mine, theirs, calls = run_dpm_solver(sampling, ours.sample_dpm_adaptive, "sample_dpm_adaptive",
                                         noise_ranges(sampling)[where], **ADAPTIVE_CASES[case])
    assert len(calls.calls) > 2
    last = calls.calls[-1]
    assert last["steps"] == len(calls.calls) and last["n_accept"] + last["n_reject"] == last["steps"]
    assert_matches(case, mine, theirs)


def test_dpm_solvers_refuse_a_zero_sigma():
    model, x = ToyDenoiser(), torch.zeros(SHAPE)
    with pytest.raises(ValueError):
        ours.sample_dpm_fast(model, x, 0.0, SIGMA_MAX, 5, noise_sampler=StepNoise().sampler())
    with pytest.raises(ValueError):
        ours.sample_dpm_adaptive(model, x, 0.0, SIGMA_MAX, noise_sampler=StepNoise().sampler())


# --- callbacks ----------------------------------------------------------------------------------


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", sorted(ours.SAMPLER_FUNCTIONS))
def test_an_exception_from_the_callback_ends_sampling(sampling, name):
    def stop_at_step_2(info):
        if info["i"] == 2:
            raise Stop

    sigmas = karras(sampling, 25)
    entry = ours.SAMPLER_FUNCTIONS[name]
    levels = {"sigmas": sigmas, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "n": 25}
    model = ToyDenoiser()
    x = start_latents(sigmas)
    with pytest.raises(Stop):
        entry(model, x, **{key: levels[key] for key in entry.levels}, noise_sampler=StepNoise().sampler(),
              callback=stop_at_step_2)
    assert model.calls <= 12


# --- Brownian noise ------------------------------------------------------------------------------


def test_brownian_noise_matches_k_diffusion(sampling):
    sigmas = karras(sampling)
    x = start_latents(sigmas)
    mine, theirs = brownian_pair(sampling, x, sigmas)
    top, bottom = float(sigmas[0]), float(sigmas[-2])
    queries = [(sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 2)]
    queries += [(sigmas[3], sigmas[1]),                        # upwards, as Restart climbs
                (torch.tensor(top * 1.0001), sigmas[2]),         # outside the range: torchsde clamps
                (sigmas[-3], torch.tensor(bottom * 0.999)),
                (torch.tensor(2.0), torch.tensor(0.5))]
    with warnings.catch_warnings(record=True) as caught:
        my_draws = [mine(a, b) for a, b in queries]
    assert not [w for w in caught if "Should have" in str(w.message)]  # torchsde's clamping stays quiet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        their_draws = [theirs(a, b) for a, b in queries]
    for a, b in zip(my_draws, their_draws):
        assert a.shape == SHAPE and a.dtype == torch.float32
        assert torch.equal(a, b)


def test_brownian_noise_of_an_image_depends_only_on_its_seed():
    x = torch.zeros(SHAPE)
    first = BrownianNoise(x, SIGMA_MIN, SIGMA_MAX, [11, 22])
    second = BrownianNoise(x, SIGMA_MIN, SIGMA_MAX, [33, 22])
    alone = BrownianNoise(x[1:], SIGMA_MIN, SIGMA_MAX, [22])
    for a, b in [(14.0, 9.0), (9.0, 3.0), (3.0, 0.1), (0.1, 0.05)]:
        batch_one, batch_two, single = first(a, b), second(a, b), alone(a, b)
        assert torch.equal(batch_one[1], batch_two[1])
        assert torch.equal(batch_one[1], single[0])
        assert not torch.allclose(batch_one[0], batch_two[0])


def test_brownian_noise_has_unit_variance_and_needs_a_seed_per_image():
    x = torch.zeros((1, 4, 32, 32))
    noise = BrownianNoise(x, SIGMA_MIN, SIGMA_MAX, [5])
    draw = noise(torch.tensor(8.0), torch.tensor(2.0))
    assert abs(float(draw.std()) - 1) < 0.1
    with pytest.raises(ValueError):
        BrownianNoise(torch.zeros(SHAPE), SIGMA_MIN, SIGMA_MAX, [5])


# --- the table the runner builds its calls from -----------------------------------------------------

# A1111 1.10's sampler_extra_params (modules/sd_samplers_kdiffusion.py); eta is added wherever the
# function's signature has it, and everything is filtered by the signature.
A1111_EXTRA_PARAMS = {
    "sample_euler": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_heun": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_dpm_2": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_dpm_fast": ["s_noise"],
    "sample_dpm_2_ancestral": ["s_noise"],
    "sample_dpmpp_2s_ancestral": ["s_noise"],
    "sample_dpmpp_sde": ["s_noise"],
    "sample_dpmpp_2m_sde": ["s_noise"],
    "sample_dpmpp_3m_sde": ["s_noise"],
}
A1111_OWN = {"restart": ("s_noise", "restart_list"), "lcm": ()}  # their keyword parameters, no eta


def test_sampler_table_says_what_a1111_passes(sampling):
    expected_names = {name for name in dir(sampling) if name.startswith("sample_")} | set(A1111_OWN)
    assert set(ours.SAMPLER_FUNCTIONS) == expected_names
    for name, entry in ours.SAMPLER_FUNCTIONS.items():
        our_parameters = inspect.signature(entry.function).parameters
        assert {"noise_sampler", "callback"} <= set(our_parameters)
        if name in A1111_OWN:
            expected, levels = (), ("sigmas",)
        else:
            reference = inspect.signature(getattr(sampling, name)).parameters
            expected = tuple(p for p in A1111_EXTRA_PARAMS.get(name, []) if p in reference)
            expected = (("eta",) if "eta" in reference else ()) + expected
            levels = tuple(p for p in ("sigmas", "sigma_min", "sigma_max", "n") if p in reference)
        assert set(entry.parameters) == set(expected), name
        assert entry.levels == levels, name
        assert set(entry.parameters) | set(entry.levels) <= set(our_parameters)
