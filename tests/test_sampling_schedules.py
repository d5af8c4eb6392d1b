"""The sigma schedules of engine/sampling/schedules.py against references written here.

Every schedule type is re-derived in plain numpy/Python (float64) from A1111 v1.10's formulas,
and, where k-diffusion has the function A1111 calls (Karras, Exponential, Polyexponential, the
discrete-schedule wrapper's timestep mapping), compared with k-diffusion 0.1.1.post1 itself,
which must agree to the bit because our arithmetic follows the same order in float32. The
model tables come from diffusers-style scheduler configs, with alphas_cumprod built here the way
the LDM code builds it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from engine.sampling.schedules import (
    SCHEDULE_TYPES,
    LcmSigmas,
    ModelSigmas,
    find_schedule,
    sampler_sigmas,
    schedule_sigmas,
)
from tests.support import kdiffusion_ref

SD1_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear"}
# SD 2.x 768-v: the same betas; the prediction type does not change the noise table.
SD2_V_CONFIG = {**SD1_CONFIG, "prediction_type": "v_prediction"}
# DDPM's original betas (diffusers "linear" = LDM "sqrt_linear"): a very different sigma range.
LINEAR_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                 "beta_schedule": "linear"}
CONFIGS = {"sd1": SD1_CONFIG, "sd2-v": SD2_V_CONFIG, "linear-betas": LINEAR_CONFIG}

# Align Your Steps' published tables (NVIDIA's how-to page).
AYS_SD1 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]

LABELS = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
          "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]


@pytest.fixture(scope="module")
def kdiff():
    return kdiffusion_ref.load()


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------

def reference_alphas_cumprod(config) -> torch.Tensor:
    """numpy float64 betas and cumulative product, stored as float32 (the LDM way)."""
    count, start, end = config["num_train_timesteps"], config["beta_start"], config["beta_end"]
    if config["beta_schedule"] == "scaled_linear":
        betas = np.linspace(math.sqrt(start), math.sqrt(end), count, dtype=np.float64) ** 2
    else:
        betas = np.linspace(start, end, count, dtype=np.float64)
    return torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)


def table_sigmas(alphas: torch.Tensor) -> np.ndarray:
    """The noise levels in float64 from the float32 table."""
    a = alphas.double().numpy()
    return np.sqrt((1.0 - a) / a)


def log_interp_sigma(sigmas: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Sigma at fractional table positions, linear in log sigma."""
    return np.exp(np.interp(t, np.arange(len(sigmas)), np.log(sigmas)))


def timestep_of(sigmas: np.ndarray, sigma: float) -> float:
    """Fractional table position of a sigma, linear in log sigma."""
    return float(np.interp(math.log(sigma), np.log(sigmas), np.arange(len(sigmas))))


def ref_uniform(sigmas: np.ndarray, n: int) -> np.ndarray:
    return np.append(log_interp_sigma(sigmas, np.linspace(len(sigmas) - 1, 0, n)), 0.0)


def ref_sgm_uniform(sigmas: np.ndarray, n: int, smin: float, smax: float) -> np.ndarray:
    t = np.linspace(timestep_of(sigmas, smax), timestep_of(sigmas, smin), n + 1)[:-1]
    return np.append(log_interp_sigma(sigmas, t), 0.0)


def ref_normal(sigmas: np.ndarray, n: int, smin: float, smax: float) -> np.ndarray:
    t = np.linspace(timestep_of(sigmas, smax), timestep_of(sigmas, smin), n)
    return np.append(log_interp_sigma(sigmas, t), 0.0)


def ref_kl_optimal(n: int, smin: float, smax: float) -> np.ndarray:
    """tan of n + 1 angles evenly spaced from arctan(sigma_max) to arctan(sigma_min); no 0."""
    return np.array([math.tan(math.atan(smax) + i / n * (math.atan(smin) - math.atan(smax)))
                     for i in range(n + 1)])


def ref_align_your_steps(table: list[float], n: int) -> np.ndarray:
    """The table itself for 11 steps; otherwise n points at evenly spaced positions along it,
    interpolated linearly in log sigma between the two neighbouring entries."""
    if n == len(table):
        return np.array(table + [0.0])
    points = []
    for k in range(n):
        position = k / (n - 1) * (len(table) - 1) if n > 1 else 0.0
        low = min(math.floor(position), len(table) - 2)
        fraction = position - low
        points.append(math.exp((1 - fraction) * math.log(table[low]) + fraction * math.log(table[low + 1])))
    return np.array(points + [0.0])


def ref_simple(sigmas: np.ndarray, n: int) -> np.ndarray:
    picks = [sigmas[len(sigmas) - 1 - int(i * len(sigmas) / n)] for i in range(n)]
    return np.array(picks + [0.0])


def ref_ddim(sigmas: np.ndarray, n: int) -> np.ndarray:
    stride = max(len(sigmas) // n, 1)
    return np.append(sigmas[1::stride][::-1], 0.0)


def ref_beta(n: int, smin: float, smax: float, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    quantiles = stats.beta.ppf(np.linspace(1, 0, n), alpha, beta)
    return np.append(smin + quantiles * (smax - smin), 0.0)


def assert_matches(ours: torch.Tensor, expected, rtol: float = 1e-5, atol: float = 1e-7):
    assert ours.dtype == torch.float32 and ours.device.type == "cpu"
    expected = torch.as_tensor(np.asarray(expected, dtype=np.float64))
    assert ours.shape == expected.shape, (ours, expected)
    torch.testing.assert_close(ours.double(), expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# The model's table
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [SD1_CONFIG, LINEAR_CONFIG], ids=["scaled_linear", "linear"])
def test_from_config_builds_alphas_the_ldm_way(config):
    ours = ModelSigmas.from_config(config).alphas_cumprod
    assert ours.dtype == torch.float32 and ours.shape == (1000,)
    assert torch.equal(ours, reference_alphas_cumprod(config))


@pytest.mark.parametrize("config", [SD1_CONFIG, LINEAR_CONFIG], ids=["scaled_linear", "linear"])
def test_ldm_table_differs_from_diffusers_float32_table_only_in_the_last_bits(config):
    """diffusers multiplies the cumulative product in float32; A1111's model holds the float64
    product rounded once. The two differ (hence from_config does it the LDM way), by < 1e-6."""
    from diffusers import DDPMScheduler

    scheduler_config = {key: value for key, value in config.items() if key != "prediction_type"}
    theirs = DDPMScheduler(**scheduler_config).alphas_cumprod
    ours = ModelSigmas.from_config(config).alphas_cumprod
    relative = ((ours - theirs).abs() / ours).max().item()
    assert 0 < relative < 1e-6


def test_cosine_betas_follow_the_squared_cosine_formula():
    config = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / 1000) / alpha_bar(i / 1000), 0.999) for i in range(1000)]
    expected = np.cumprod(1.0 - np.array(betas))
    ours = ModelSigmas.from_config(config).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_trained_betas_are_used_as_given():
    betas = np.linspace(0.001, 0.01, 50)
    ours = ModelSigmas.from_config({"trained_betas": betas.tolist(), "beta_schedule": "linear"})
    expected = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
    assert torch.equal(ours.alphas_cumprod, expected)


def test_unknown_beta_schedule_is_refused():
    with pytest.raises(ValueError):
        ModelSigmas.from_config({**SD1_CONFIG, "beta_schedule": "sigmoid"})


def test_sd1_sigma_range():
    model = ModelSigmas.from_config(SD1_CONFIG)
    assert isinstance(model.sigma_min, float) and isinstance(model.sigma_max, float)
    assert model.sigma_min == pytest.approx(0.0292, abs=5e-5)
    assert model.sigma_max == pytest.approx(14.6146, abs=5e-5)
    assert model.sigmas.dtype == torch.float32 and model.sigmas.shape == (1000,)
    assert bool((model.sigmas[1:] > model.sigmas[:-1]).all())
    np.testing.assert_allclose(model.sigmas.double().numpy(), table_sigmas(model.alphas_cumprod), rtol=1e-6)
    assert torch.equal(model.log_sigmas, model.sigmas.log())


def test_from_table_accepts_plain_values():
    alphas = reference_alphas_cumprod(SD1_CONFIG)
    model = ModelSigmas.from_table(alphas.double().numpy())
    assert torch.equal(model.alphas_cumprod, alphas)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_timestep_mapping_equals_kdiffusion_discrete_schedule(kdiff, name):
    _, external = kdiff
    model = ModelSigmas.from_config(CONFIGS[name])
    alphas = model.alphas_cumprod
    theirs = external.DiscreteSchedule(((1 - alphas) / alphas) ** 0.5, quantize=False)
    assert torch.equal(model.sigmas, theirs.sigmas)

    generator = torch.Generator().manual_seed(3)
    # Inside the table, beyond both ends, and exactly on entries.
    sigmas = torch.cat([
        torch.exp(torch.empty(2000).uniform_(math.log(model.sigma_min) - 1, math.log(model.sigma_max) + 1,
                                             generator=generator)),
        model.sigmas[::37],
    ])
    torch.testing.assert_close(model.sigma_to_t(sigmas), theirs.sigma_to_t(sigmas), rtol=1e-6, atol=1e-6)
    assert torch.equal(model.sigma_to_t(sigmas), theirs.sigma_to_t(sigmas))
    scalar = torch.tensor(1.234)
    assert model.sigma_to_t(scalar).shape == () and torch.equal(model.sigma_to_t(scalar), theirs.sigma_to_t(scalar))

    timesteps = torch.cat([torch.rand(2000, generator=generator) * 999, torch.arange(0, 1000, 7).float()])
    torch.testing.assert_close(model.t_to_sigma(timesteps), theirs.t_to_sigma(timesteps), rtol=1e-6, atol=1e-6)
    assert torch.equal(model.t_to_sigma(timesteps), theirs.t_to_sigma(timesteps))

    for n in (1, 2, 7, 10, 20, 150):
        assert torch.equal(model.uniform(n), theirs.get_sigmas(n))


def test_timestep_mapping_follows_the_log_sigma_formula():
    model = ModelSigmas.from_config(SD1_CONFIG)
    sigmas = table_sigmas(model.alphas_cumprod)
    probes = [0.05, 0.5, 1.0, 3.3, 9.0, 14.0]
    expected_t = [timestep_of(sigmas, s) for s in probes]
    np.testing.assert_allclose(model.sigma_to_t(torch.tensor(probes)).numpy(), expected_t, atol=2e-3)
    # Outside the table the timestep is clamped to its ends.
    assert model.sigma_to_t(torch.tensor([0.001, 100.0])).tolist() == [0.0, 999.0]
    t = np.array([0.0, 0.5, 123.25, 998.9, 999.0])
    np.testing.assert_allclose(model.t_to_sigma(torch.tensor(t)).numpy(), log_interp_sigma(sigmas, t), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Schedule types
# ---------------------------------------------------------------------------------------------

def test_schedule_types_are_a1111s_menu():
    assert [s.label for s in SCHEDULE_TYPES] == LABELS
    assert [s.name for s in SCHEDULE_TYPES] == [
        "automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform",
        "kl_optimal", "align_your_steps", "simple", "normal", "ddim", "beta"]
    rho = {s.label: s.default_rho for s in SCHEDULE_TYPES}
    assert rho.pop("Karras") == 7.0 and rho.pop("Polyexponential") == 1.0
    assert set(rho.values()) == {-1}
    assert {s.label for s in SCHEDULE_TYPES if s.need_inner_model} == {
        "Uniform", "SGM Uniform", "Simple", "Normal", "DDIM", "Beta"}
    assert {s.label: s.aliases for s in SCHEDULE_TYPES if s.aliases} == {"SGM Uniform": ("SGMUniform",)}
    assert find_schedule("SGMUniform") is find_schedule("sgm_uniform") is find_schedule("SGM Uniform")
    with pytest.raises(dataclasses.FrozenInstanceError):
        SCHEDULE_TYPES[0].label = "x"


def test_automatic_and_unknown_labels_are_refused():
    model = ModelSigmas.from_config(SD1_CONFIG)
    with pytest.raises(ValueError):
        schedule_sigmas("Automatic", 10, model)
    with pytest.raises(ValueError):
        schedule_sigmas("Karras Exponential", 10, model)
    with pytest.raises(ValueError):
        schedule_sigmas("Karras", 0, model)


def expected_schedule(label: str, n: int, model: ModelSigmas, *, is_sdxl: bool = False):
    """(expected values, rtol) for one schedule type, from the references above."""
    sigmas = table_sigmas(model.alphas_cumprod)
    smin, smax = model.sigma_min, model.sigma_max
    if label == "Uniform":
        return ref_uniform(sigmas, n), 1e-5
    if label == "Karras":
        ramp = np.linspace(0, 1, n)
        return np.append((smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7, 0.0), 1e-5
    if label in ("Exponential", "Polyexponential"):  # Polyexponential's rho 1 is Exponential
        return np.append(np.exp(np.linspace(math.log(smax), math.log(smin), n)), 0.0), 1e-5
    if label == "SGM Uniform":
        return ref_sgm_uniform(sigmas, n, smin, smax), 1e-5
    if label == "KL Optimal":
        return ref_kl_optimal(n, smin, smax), 2e-5
    if label == "Align Your Steps":
        return ref_align_your_steps(AYS_SDXL if is_sdxl else AYS_SD1, n), 1e-6
    if label == "Simple":
        return ref_simple(sigmas, n), 1e-6
    if label == "Normal":
        return ref_normal(sigmas, n, smin, smax), 1e-5
    if label == "DDIM":
        return ref_ddim(sigmas, n), 1e-6
    if label == "Beta":
        return ref_beta(n, smin, smax), 1e-6
    raise AssertionError(label)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("n", [10, 7])
@pytest.mark.parametrize("label", LABELS[1:])
def test_every_schedule_type_matches_its_formula(name, n, label):
    model = ModelSigmas.from_config(CONFIGS[name])
    expected, rtol = expected_schedule(label, n, model)
    assert_matches(schedule_sigmas(label, n, model), expected, rtol=rtol)


@pytest.mark.parametrize("n", [10, 7, 25])
def test_kdiffusion_schedules_are_bit_identical(kdiff, n):
    sampling, external = kdiff
    model = ModelSigmas.from_config(SD1_CONFIG)
    smin, smax = model.sigma_min, model.sigma_max
    assert torch.equal(schedule_sigmas("Karras", n, model), sampling.get_sigmas_karras(n, smin, smax, rho=7.0))
    assert torch.equal(schedule_sigmas("Exponential", n, model), sampling.get_sigmas_exponential(n, smin, smax))
    assert torch.equal(schedule_sigmas("Polyexponential", n, model),
                       sampling.get_sigmas_polyexponential(n, smin, smax, rho=1.0))
    theirs = external.DiscreteSchedule(model.sigmas.clone(), quantize=False)
    assert torch.equal(schedule_sigmas("Uniform", n, model), theirs.get_sigmas(n))


@pytest.mark.parametrize("n", [10, 7])
def test_timestep_walks_equal_kdiffusion_one_timestep_at_a_time(kdiff, n):
    """SGM Uniform and Normal convert each timestep separately, as A1111's loops do."""
    _, external = kdiff
    model = ModelSigmas.from_config(SD1_CONFIG)
    theirs = external.DiscreteSchedule(model.sigmas.clone(), quantize=False)
    start = theirs.sigma_to_t(torch.tensor(model.sigma_max))
    end = theirs.sigma_to_t(torch.tensor(model.sigma_min))
    assert (float(start), float(end)) == (999.0, 0.0)
    for label, timesteps in (("SGM Uniform", torch.linspace(start, end, n + 1)[:-1]),
                             ("Normal", torch.linspace(start, end, n))):
        expected = torch.tensor([float(theirs.t_to_sigma(t)) for t in timesteps] + [0.0])
        assert torch.equal(schedule_sigmas(label, n, model), expected), label


def test_kl_optimal_ends_at_sigma_min_not_zero():
    model = ModelSigmas.from_config(SD1_CONFIG)
    sigmas = schedule_sigmas("KL Optimal", 10, model)
    assert sigmas.shape == (11,)
    assert float(sigmas[0]) == pytest.approx(model.sigma_max, rel=1e-6)
    assert float(sigmas[-1]) == pytest.approx(model.sigma_min, rel=1e-6)


def test_ddim_schedule_can_be_longer_than_the_steps():
    """k = 1000 // 7 = 142 does not divide the table: A1111 walks 1, 143, ..., 995 (8 sigmas)."""
    model = ModelSigmas.from_config(SD1_CONFIG)
    sigmas = schedule_sigmas("DDIM", 7, model)
    assert sigmas.shape == (9,)
    assert float(sigmas[0]) == float(model.sigmas[995]) and float(sigmas[-2]) == float(model.sigmas[1])


@pytest.mark.parametrize("is_sdxl", [False, True], ids=["sd1", "sdxl"])
@pytest.mark.parametrize("n", [11, 10, 7, 30])
def test_align_your_steps_tables(is_sdxl, n):
    model = ModelSigmas.from_config(SD1_CONFIG)
    table = AYS_SDXL if is_sdxl else AYS_SD1
    ours = schedule_sigmas("Align Your Steps", n, model, is_sdxl=is_sdxl)
    assert_matches(ours, ref_align_your_steps(table, n), rtol=1e-6)
    # The model's own range does not matter; the ends are the table's.
    assert float(ours[0]) == pytest.approx(14.615) and float(ours[-2]) == pytest.approx(0.029)


def test_align_your_steps_uses_the_published_table_as_is_only_for_eleven_steps():
    model = ModelSigmas.from_config(SD1_CONFIG)
    exact = torch.tensor(AYS_SD1 + [0.0], dtype=torch.float32)
    assert torch.equal(schedule_sigmas("Align Your Steps", 11, model), exact)
    ten = schedule_sigmas("Align Your Steps", 10, model)
    assert ten.shape == (11,) and not torch.equal(ten, exact)


@pytest.mark.parametrize("alpha,beta", [(0.6, 0.6), (0.5, 0.7)])
def test_beta_schedule_uses_its_settings(alpha, beta):
    model = ModelSigmas.from_config(SD1_CONFIG)
    ours = schedule_sigmas("Beta", 12, model, beta_alpha=alpha, beta_beta=beta)
    assert_matches(ours, ref_beta(12, model.sigma_min, model.sigma_max, alpha, beta), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Settings: sigma_min, sigma_max, rho
# ---------------------------------------------------------------------------------------------

def test_sigma_range_and_rho_settings(kdiff):
    sampling, _ = kdiff
    model = ModelSigmas.from_config(SD1_CONFIG)
    assert torch.equal(schedule_sigmas("Karras", 10, model, sigma_min=0.1, sigma_max=10.0, rho=5.0),
                       sampling.get_sigmas_karras(10, 0.1, 10.0, rho=5.0))
    assert torch.equal(schedule_sigmas("Polyexponential", 10, model, rho=2.0),
                       sampling.get_sigmas_polyexponential(10, model.sigma_min, model.sigma_max, rho=2.0))
    # 0 (or None) means the model's and the schedule's own, as A1111's settings at 0 do.
    assert torch.equal(schedule_sigmas("Karras", 10, model, sigma_min=0.0, sigma_max=0.0, rho=0.0),
                       sampling.get_sigmas_karras(10, model.sigma_min, model.sigma_max, rho=7.0))
    # rho does not apply to a schedule without one.
    assert torch.equal(schedule_sigmas("Exponential", 10, model, rho=3.0), schedule_sigmas("Exponential", 10, model))


def test_sigma_range_settings_move_the_timestep_walks():
    model = ModelSigmas.from_config(SD1_CONFIG)
    sigmas = table_sigmas(model.alphas_cumprod)
    assert_matches(schedule_sigmas("Normal", 8, model, sigma_min=0.1, sigma_max=10.0),
                   ref_normal(sigmas, 8, 0.1, 10.0), rtol=1e-5)
    assert_matches(schedule_sigmas("SGM Uniform", 8, model, sigma_min=0.1, sigma_max=10.0),
                   ref_sgm_uniform(sigmas, 8, 0.1, 10.0), rtol=1e-5)
    assert_matches(schedule_sigmas("KL Optimal", 8, model, sigma_min=0.1, sigma_max=10.0),
                   ref_kl_optimal(8, 0.1, 10.0), rtol=2e-5)
    assert_matches(schedule_sigmas("Beta", 8, model, sigma_min=0.1, sigma_max=10.0),
                   ref_beta(8, 0.1, 10.0), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# What the sampler runs over
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", LABELS[1:])
def test_discarding_drops_the_penultimate_sigma_of_a_longer_schedule(label):
    model = ModelSigmas.from_config(SD1_CONFIG)
    longer = schedule_sigmas(label, 11, model).tolist()
    ours = sampler_sigmas(label, 10, model, discard_next_to_last=True)
    assert ours.tolist() == longer[:-2] + longer[-1:]
    assert torch.equal(sampler_sigmas(label, 10, model, discard_next_to_last=False),
                       schedule_sigmas(label, 10, model))


def test_sampler_sigmas_pass_the_settings_on(kdiff):
    sampling, _ = kdiff
    model = ModelSigmas.from_config(SD1_CONFIG)
    ours = sampler_sigmas("Karras", 6, model, discard_next_to_last=True, sigma_max=9.0, rho=4.0)
    theirs = sampling.get_sigmas_karras(7, model.sigma_min, 9.0, rho=4.0)
    assert torch.equal(ours, torch.cat([theirs[:-2], theirs[-1:]]))


# ---------------------------------------------------------------------------------------------
# LCM
# ---------------------------------------------------------------------------------------------

def lcm_reference_sigmas() -> np.ndarray:
    """Every 20th noise level of the SD 1.x table: timesteps 19, 39, ..., 999."""
    return table_sigmas(reference_alphas_cumprod(SD1_CONFIG))[19::20]


def test_lcm_table_is_every_twentieth_noise_level():
    model = LcmSigmas.from_config(SD1_CONFIG)
    expected = lcm_reference_sigmas()
    assert model.sigmas.shape == (50,)
    np.testing.assert_allclose(model.sigmas.double().numpy(), expected, rtol=1e-6)
    assert model.alphas_cumprod.shape == (1000,)  # the model's own table is kept
    assert model.sigma_max == pytest.approx(float(expected[-1]), rel=1e-6)
    assert model.sigma_min == pytest.approx(float(expected[0]), rel=1e-6)


def test_lcm_timesteps_are_quantised_to_the_table():
    model = LcmSigmas.from_config(SD1_CONFIG)
    sigmas = lcm_reference_sigmas()
    probes = np.array([0.001, sigmas[0], 0.2, 1.0, 2.5, 7.7, sigmas[-1], 100.0])
    nearest = np.abs(np.log(probes)[None, :] - np.log(sigmas)[:, None]).argmin(axis=0)
    ours = model.sigma_to_t(torch.tensor(probes, dtype=torch.float32))
    assert ours.dtype == torch.int64
    assert ours.tolist() == (nearest * 20 + 19).tolist()
    # Timesteps map back through (t - 19) / 20, clamped to the table, interpolated in log sigma.
    t = np.array([0.0, 19.0, 29.0, 500.0, 999.0, 1200.0])
    positions = np.clip((t - 19) / 20, 0, 49)
    np.testing.assert_allclose(model.t_to_sigma(torch.tensor(t, dtype=torch.float32)).numpy(),
                               log_interp_sigma(sigmas, positions), rtol=1e-5)


@pytest.mark.parametrize("n", [4, 8])
def test_lcm_automatic_schedule_spans_timesteps_999_to_19(n):
    model = LcmSigmas.from_config(SD1_CONFIG)
    ours = sampler_sigmas("Uniform", n, model, discard_next_to_last=False)
    timesteps = model.sigma_to_t(ours[:-1])
    assert int(timesteps[0]) == 999 and int(timesteps[-1]) == 19
    assert float(ours[-1]) == 0.0
    sigmas = lcm_reference_sigmas()
    positions = (np.linspace(999, 19, n) - 19) / 20
    assert_matches(ours, np.append(log_interp_sigma(sigmas, positions), 0.0), rtol=1e-5)


def test_lcm_table_drives_the_table_based_schedules():
    model = LcmSigmas.from_config(SD1_CONFIG)
    sigmas = lcm_reference_sigmas()
    assert_matches(schedule_sigmas("Simple", 8, model), ref_simple(sigmas, 8), rtol=1e-6)
    assert_matches(schedule_sigmas("DDIM", 10, model), ref_ddim(sigmas, 10), rtol=1e-6)
    assert_matches(schedule_sigmas("Karras", 8, model),
                   expected_schedule("Karras", 8, model)[0], rtol=1e-5)
