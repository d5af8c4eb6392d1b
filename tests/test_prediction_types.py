"""Prediction types and noise schedules read from the file (SDXL `v_pred` / `ztsnr` keys, Playground
v2.5's `edm_mean` / `edm_std`, an SD 1.x `.yaml` sidecar), the per-checkpoint override, the noise
schedule setting and CFG Rescale.

Tiny checkpoints are written in the original single-file layout with the marker keys added and
loaded through the user's path (a models folder, the registry, the model manager). Sampling is
checked against k-diffusion's own samplers and its VDenoiser wrapper (the code A1111 runs), and
against Karras et al.'s EDM preconditioning written out here, over the same tiny UNet with the
same sigmas; the noise tables against the published formulas computed in float64.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.addons import AddOns
from engine.devices import DeviceConfig
from engine.engine import Engine
from engine.errors import RequestError
from engine.files import HashCache
from engine.models.pipelines import ModelManager
from engine.models import prediction as predictions
from engine.models.registry import ModelRegistry
from engine.networks.vae import decode, encode
from engine.output import infotext
from engine.output.writer import OutputWriter
from engine.request import GenerationRequest
from engine.sampling import k_samplers, samplers
from engine.sampling.denoiser import CFGDenoiser, Conditioning
from engine.sampling.schedules import SCHEDULE_TYPES, sampler_sigmas
from engine.settings.store import Settings
from tests.support import kdiffusion_ref
from tests.support.ldm_export import ldm_state_dict, save_ldm_state_dict

# Playground v2.5's published latent statistics, written into the EDM file as it carries them.
EDM_MEAN = [-1.6574, 1.886, -1.383, 2.5155]
EDM_STD = [8.4927, 5.9022, 6.5498, 5.2299]
ZTSNR_LAST = 4.8973451890853435e-08


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory):
    """A models folder with the marked checkpoints; returns (folder, {name: file})."""
    folder = tmp_path_factory.mktemp("prediction-models")
    written = {}

    def write(name: str, family: str, extra: dict):
        state = ldm_state_dict(tiny_models.reference_pipeline(family), family)
        state.update(extra)
        written[name] = folder / f"{name}.safetensors"
        save_ldm_state_dict(state, written[name])

    marker = torch.tensor([])  # the real files carry empty tensors under these keys
    write("xl-vpred-ztsnr", "sdxl", {"v_pred": marker, "ztsnr": marker})
    write("xl-vpred", "sdxl", {"v_pred": marker})
    write("xl-edm", "sdxl", {"edm_mean": torch.tensor(EDM_MEAN).view(1, 4, 1, 1),
                              "edm_std": torch.tensor(EDM_STD).view(1, 4, 1, 1)})
    write("sd1-yaml-v", "sd1", {})
    (folder / "sd1-yaml-v.yaml").write_text(
        "model:\n  params:\n    parameterization: \"v\"\n    rescale_betas_zero_snr: true\n")
    write("sd1-plain", "sd1", {})
    return folder, written


@pytest.fixture(scope="module")
def manager(files, tiny_models, tmp_path_factory):
    folder, _ = files
    hashes = HashCache(tmp_path_factory.mktemp("prediction-cache") / "cache.json")
    return ModelManager(ModelRegistry([folder], hashes), DeviceConfig.choose(use_cpu=True),
                        config_root=tiny_models.config_root)


@pytest.fixture(scope="module")
def engine(files, manager, tmp_path_factory):
    data = tmp_path_factory.mktemp("prediction-engine")
    engine = Engine(manager, OutputWriter(data / "outputs"), Settings(data / "config.json"),
                    AddOns.in_data_dir(data, HashCache(data / "cache.json")))
    yield engine
    engine.shutdown()


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind, zero_snr, source", [
    ("xl-vpred-ztsnr", "v_prediction", True, "file key v_pred, ztsnr"),
    ("xl-vpred", "v_prediction", False, "file key v_pred"),
    ("xl-edm", "edm", False, "file keys edm_mean, edm_std"),
    ("sd1-yaml-v", "v_prediction", True, "sd1-yaml-v.yaml"),
    ("sd1-plain", "epsilon", False, "default"),
])
def test_the_file_says_what_it_predicts(manager, name, kind, zero_snr, source):
    model = manager.load(name)
    assert (model.detected.prediction_type, model.detected.zero_snr, model.detected.source) == \
        (kind, zero_snr, source)
    assert model.prediction_type == kind
    if kind == "v_prediction":  # the pipeline's own scheduler is told too
        assert model.base.scheduler.config.prediction_type == "v_prediction"


def test_edm_file_brings_its_latent_statistics(manager):
    model = manager.load("xl-edm")
    latents = model.detected.latents
    assert latents.mean == pytest.approx(EDM_MEAN) and latents.std == pytest.approx(EDM_STD)
    assert latents.scaling_factor == 0.5
    assert model.detected.edm == predictions.EdmSchedule(0.002, 80.0)


# ---------------------------------------------------------------------------------------------
# Noise tables
# ---------------------------------------------------------------------------------------------

def _reference_alphas_cumprod(zero_snr: bool) -> np.ndarray:
    """SD's scaled-linear schedule, and Lin et al.'s Algorithm 1 on it, in float64."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    if not zero_snr:
        return alphas_cumprod
    root = np.sqrt(alphas_cumprod)
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    rescaled = root ** 2
    rescaled[-1] = ZTSNR_LAST  # what A1111 puts there so the largest sigma stays finite
    return rescaled


def test_zero_terminal_snr_table_follows_the_formula(manager):
    model = manager.load("xl-vpred-ztsnr")
    table = model.sigma_table()
    alphas = _reference_alphas_cumprod(True)
    np.testing.assert_allclose(table.alphas_cumprod.numpy(), alphas, rtol=1e-6, atol=1e-7)
    # float32 as A1111 keeps it: 1 - alphas_cumprod near 1 loses digits at the smallest sigmas
    np.testing.assert_allclose(table.sigmas.numpy(), np.sqrt((1 - alphas) / alphas), rtol=1e-4)
    assert table.sigma_max == pytest.approx(4518.8, rel=1e-3)  # finite, far above SD's 14.6
    assert table.alphas_cumprod[0] == pytest.approx(_reference_alphas_cumprod(False)[0], rel=1e-6)


def test_edm_table_is_continuous_between_its_limits(manager):
    table = manager.load("xl-edm").sigma_table()
    assert (table.sigma_min, table.sigma_max) == (pytest.approx(0.002), pytest.approx(80.0))
    log = np.log(table.sigmas.numpy().astype(np.float64))
    np.testing.assert_allclose(np.diff(log), np.diff(log)[0], rtol=1e-3)  # evenly spaced in log sigma
    sigma = torch.tensor([0.5, 3.0])
    torch.testing.assert_close(table.unet_timestep(sigma), 0.25 * sigma.log())


# ---------------------------------------------------------------------------------------------
# Sampling against k-diffusion over the same UNet
# ---------------------------------------------------------------------------------------------

def _conditioning(unet, batch: int = 1, seed: int = 3) -> Conditioning:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 77, unet.config.cross_attention_dim)
    cond, uncond = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    pooled = None
    if unet.config.projection_class_embeddings_input_dim:
        width = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        pooled = torch.randn((2, batch, width), generator=generator)
    return Conditioning(cond, uncond, None if pooled is None else pooled[0], None if pooled is None else pooled[1])


TIME_IDS = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])


class _UNetAsCompVis(torch.nn.Module):
    """The diffusers UNet as k-diffusion's CompVis wrappers call it: apply_model(x, t, cond),
    with the reference's own alphas_cumprod."""

    def __init__(self, unet, alphas_cumprod: np.ndarray, pooled):
        super().__init__()
        self.unet, self.pooled = unet, pooled
        self.register_buffer("alphas_cumprod", torch.tensor(alphas_cumprod, dtype=torch.float32))

    def apply_model(self, x, t, cond):
        return _unet_call(self.unet, x, t, cond, self.pooled)


def _unet_call(unet, x, t, embeds, pooled):
    kwargs = {}
    if pooled is not None:
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": TIME_IDS.expand(x.shape[0], -1)}
    return unet(x, t, encoder_hidden_states=embeds, return_dict=False, **kwargs)[0]


def _guided(denoise, texts: Conditioning, scale: float, phi: float):
    """Classifier-free guidance over a denoiser of (x, sigma, embeds, pooled), with Lin et al.'s
    rescale written out: std of the guided result matched to the positive one's, per image."""
    def model(x, sigma):
        uncond = denoise(x, sigma, texts.uncond, texts.uncond_pooled)
        cond = denoise(x, sigma, texts.cond, texts.cond_pooled)
        guided = uncond + (cond - uncond) * scale
        if phi:
            std_cond = cond.flatten(1).std(dim=1).view(-1, 1, 1, 1)
            std_guided = guided.flatten(1).std(dim=1).view(-1, 1, 1, 1)
            guided = phi * guided * std_cond / std_guided + (1 - phi) * guided
        return guided
    return model


@pytest.mark.parametrize("sampler, schedule, phi", [
    ("sample_euler", "Uniform", 0.0), ("sample_dpmpp_2m", "Karras", 0.0), ("sample_dpmpp_2m", "Karras", 0.7)])
def test_v_prediction_zero_snr_sampling_matches_k_diffusion(manager, sampler, schedule, phi):
    sampling, external = kdiffusion_ref.load()
    model = manager.load("sd1-yaml-v")
    unet, texts, steps, scale = model.base.unet, _conditioning(model.base.unet), 6, 5.0
    ours = CFGDenoiser(unet, model.sigma_table(), model.prediction_type, scale, lambda: texts, cfg_rescale=phi)
    sigmas = sampler_sigmas(schedule, steps, model.sigma_table(), discard_next_to_last=False)

    wrapper = _UNetAsCompVis(unet, _reference_alphas_cumprod(True), None)
    v_denoiser = external.CompVisVDenoiser(wrapper, quantize=False)
    reference = _guided(lambda x, s, e, p: v_denoiser(x, s, cond=e), texts, scale, phi)
    if schedule == "Uniform":
        expected_sigmas = v_denoiser.get_sigmas(steps)
    else:
        expected_sigmas = sampling.get_sigmas_karras(steps, float(v_denoiser.sigmas[0]),
                                                     float(v_denoiser.sigmas[-1]))
    torch.testing.assert_close(sigmas, expected_sigmas.float(), rtol=2e-5, atol=0)

    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7)) * sigmas[0]
    with torch.no_grad():
        got = _ours(sampler, ours, x, sigmas)
        want = getattr(sampling, sampler)(reference, x.clone(), expected_sigmas.float(), disable=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _ours(sampler: str, denoiser, x, sigmas):
    """Our sampler function; Euler takes a noise sampler, used only with s_churn (0 here)."""
    extra = {"noise_sampler": lambda sigma, next_sigma: torch.zeros_like(x)} if sampler == "sample_euler" else {}
    return k_samplers.SAMPLER_FUNCTIONS[sampler](denoiser, x.clone(), sigmas=sigmas, **extra)


def _edm_reference(unet, pooled_of):
    """Karras et al. (2022), Table 1, with sigma_data 0.5: D(x) = c_skip x + c_out F(c_in x, c_noise)."""
    sigma_data = 0.5

    def denoise(x, sigma, embeds, pooled):
        s = sigma.view(-1, 1, 1, 1)
        c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
        c_out = s * sigma_data / (s ** 2 + sigma_data ** 2).sqrt()
        c_in = 1 / (s ** 2 + sigma_data ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * _unet_call(unet, c_in * x, c_noise, embeds, pooled)
    return denoise


@pytest.mark.parametrize("sampler, schedule", [("sample_euler", "Karras"), ("sample_dpmpp_2m", "Exponential")])
def test_edm_sampling_matches_the_edm_preconditioning(manager, sampler, schedule):
    sampling, _ = kdiffusion_ref.load()
    model = manager.load("xl-edm")
    unet, texts, steps, scale = model.base.unet, _conditioning(model.base.unet), 5, 4.0
    ours = CFGDenoiser(unet, model.sigma_table(), "edm", scale, lambda: texts, time_ids=TIME_IDS)
    sigmas = sampler_sigmas(schedule, steps, model.sigma_table(), discard_next_to_last=False, is_sdxl=True)
    maker = {"Karras": sampling.get_sigmas_karras, "Exponential": sampling.get_sigmas_exponential}[schedule]
    expected_sigmas = maker(steps, 0.002, 80.0).float()
    torch.testing.assert_close(sigmas, expected_sigmas, rtol=1e-5, atol=0)

    reference = _guided(_edm_reference(unet, None), texts, scale, 0.0)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(11)) * sigmas[0]
    with torch.no_grad():
        got = _ours(sampler, ours, x, sigmas)
        want = getattr(sampling, sampler)(reference, x.clone(), expected_sigmas, disable=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_cfg_rescale_follows_lin_et_al():
    from engine.sampling.denoiser import rescaled_guidance

    generator = torch.Generator().manual_seed(0)
    guided, positive = torch.randn((2, 4, 8, 8), generator=generator) * 3, torch.randn((2, 4, 8, 8), generator=generator)
    got = rescaled_guidance(guided, positive, 0.7)
    for image in range(2):  # per image: std(positive) / std(guided), unbiased as torch.std
        g, p = guided[image].double().numpy(), positive[image].double().numpy()
        want = 0.7 * g * (p.std(ddof=1) / g.std(ddof=1)) + 0.3 * g
        np.testing.assert_allclose(got[image].double().numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(rescaled_guidance(guided, positive, 0.0), guided)


# ---------------------------------------------------------------------------------------------
# EDM latents in the VAE
# ---------------------------------------------------------------------------------------------

def test_edm_latent_format_in_decode_and_encode(manager):
    model = manager.load("xl-edm")
    model.use_prediction(model.detected)
    vae = model.base.vae
    mean, std = torch.tensor(EDM_MEAN).view(1, 4, 1, 1), torch.tensor(EDM_STD).view(1, 4, 1, 1)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        # diffusers' StableDiffusionXLPipeline: latents * std / scaling_factor + mean, then decode
        want = vae.decode(latents * std / 0.5 + mean, return_dict=False)[0]
        torch.testing.assert_close(decode(vae, latents), want)
        images = want.clamp(-1, 1)
        raw = vae.encode(images).latent_dist.mode()
        torch.testing.assert_close(encode(vae, images), (raw - mean) * 0.5 / std)


def test_overriding_back_restores_the_vae(manager):
    model = manager.load("sd1-plain")
    before = dict(model.base.vae.config)
    model.use_prediction(predictions.overridden(model.detected, predictions.EDM_LABEL))
    assert model.base.vae.config.scaling_factor == 0.5
    assert list(model.base.vae.config.latents_mean) == pytest.approx(list(predictions.PLAYGROUND_LATENTS.mean))
    model.use_prediction(model.detected)
    after = dict(model.base.vae.config)
    assert after["scaling_factor"] == before["scaling_factor"] and after.get("latents_mean") is None


# ---------------------------------------------------------------------------------------------
# Jobs: the override, the noise schedule, infotext, refusals
# ---------------------------------------------------------------------------------------------

def _request(**fields) -> GenerationRequest:
    base = dict(prompt="a cat", steps=3, width=64, height=64, sampler_name="Euler", seed=1,
                save_images=False, save_grid=False)
    return GenerationRequest(**{**base, **fields})


def test_override_is_kept_per_checkpoint_and_used_by_the_next_job(engine, manager):
    engine.load_checkpoint("sd1-plain").outcome()
    name = manager.current.info.name
    engine.settings.update({predictions.OVERRIDES_KEY: predictions.with_override(
        {}, name, predictions.V_ZTSNR_LABEL)})
    try:
        saved = json.loads(engine.settings.path.read_text())
        assert saved[predictions.OVERRIDES_KEY] == {name: predictions.V_ZTSNR_LABEL}
        result = engine.generate(_request(cfg_rescale=0.7))
        assert (manager.current.prediction_type, manager.current.prediction.source) == ("v_prediction", "override")
        assert manager.current.sigma_table().sigma_max == pytest.approx(4518.8, rel=1e-3)
        params = infotext.parse(result.infotexts[0])[2]
        assert params["Noise Schedule"] == "Zero Terminal SNR" and params["CFG Rescale"] == "0.7"
        fields = infotext.request_fields(result.infotexts[0])
        assert fields["cfg_rescale"] == 0.7 and fields["noise_schedule"] == "Zero Terminal SNR"
    finally:
        engine.settings.update({predictions.OVERRIDES_KEY: {}})
    engine.generate(_request())
    assert manager.current.prediction == manager.current.detected  # Automatic again: as the file says


def test_noise_schedule_setting_applies_to_any_model(engine, manager):
    engine.load_checkpoint("sd1-plain").outcome()
    result = engine.generate(_request(noise_schedule="Zero Terminal SNR"))
    assert manager.current.prediction.zero_snr
    assert "Noise Schedule: Zero Terminal SNR" in result.infotexts[0]
    result = engine.generate(_request())
    assert not manager.current.prediction.zero_snr and "Noise Schedule" not in result.infotexts[0]


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC", "LCM"])
def test_timestep_samplers_are_refused_on_edm_models(engine, sampler):
    engine.load_checkpoint("xl-edm").outcome()
    with pytest.raises(RequestError, match=f"{sampler} cannot sample xl-edm: it is an EDM model"):
        engine.generate(_request(sampler_name=sampler))


def test_edm_model_makes_pictures_with_k_samplers_and_hires_fix(engine):
    engine.load_checkpoint("xl-edm").outcome()
    result = engine.generate(_request(sampler_name="DPM++ 2M", scheduler="Karras", extensions={
        "hires_fix": {"enabled": True, "scale": 1.5, "steps": 2, "denoising_strength": 0.5}}))
    assert result.images[0].size == (96, 96)
    assert np.asarray(result.images[0]).std() > 0


K_SAMPLERS = [sampler.name for sampler in samplers.SAMPLERS if sampler.kind == "k"]


@pytest.mark.parametrize("sampler", K_SAMPLERS)
def test_every_k_sampler_runs_on_an_edm_model(engine, sampler):
    engine.load_checkpoint("xl-edm").outcome()
    result = engine.generate(_request(sampler_name=sampler, steps=4))
    assert np.isfinite(np.asarray(result.images[0], dtype=np.float32)).all()


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC", "LCM", "Euler a", "DPM++ 2M SDE"])
def test_zero_snr_v_model_runs_with_timestep_samplers_too(engine, manager, sampler):
    engine.load_checkpoint("sd1-yaml-v").outcome()
    result = engine.generate(_request(sampler_name=sampler, steps=4))
    assert manager.current.prediction.zero_snr and np.asarray(result.images[0]).std() > 0


@pytest.mark.parametrize("schedule", [schedule.label for schedule in SCHEDULE_TYPES if schedule.build])
def test_every_schedule_type_on_the_edm_table(manager, schedule):
    table = manager.load("xl-edm").sigma_table()
    sigmas = sampler_sigmas(schedule, 6, table, discard_next_to_last=False, is_sdxl=True)
    positive = sigmas[sigmas > 0]
    assert torch.isfinite(sigmas).all() and (positive.diff() < 0).all()
    assert positive.max() <= 80.0 + 1e-3 and positive.min() >= 0.002 - 1e-6


def test_img2img_on_an_edm_model(engine):
    from PIL import Image

    engine.load_checkpoint("xl-edm").outcome()
    picture = Image.new("RGB", (64, 64), (200, 120, 40))
    result = engine.generate(_request(sampler_name="Euler a").with_img2img(init_images=(picture,),
                                                                           denoising_strength=0.5))
    assert result.images[0].size == (64, 64)


def test_pasted_infotext_brings_cfg_rescale_and_the_noise_schedule():
    from ui.paste import control_values, override_fields

    text = "a cat\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64, " \
           "Noise Schedule: Zero Terminal SNR, CFG Rescale: 0.7"
    values = control_values(text)
    assert values["cfg_rescale"] == 0.7
    assert "Noise Schedule: Zero Terminal SNR" in values["override_settings"]
    assert override_fields(values["override_settings"])["noise_schedule"] == "Zero Terminal SNR"
    # Forge's key for the same setting is read too.
    assert control_values(text.replace("CFG Rescale", "Rescale CFG"))["cfg_rescale"] == 0.7


@pytest.mark.parametrize("yaml_text, kind, zero_snr", [
    ("model:\n  params:\n    parameterization: v\n", "v_prediction", False),
    ("model:\n  params:\n    parameterization: eps\n", "epsilon", False),
    ("model:\n  params:\n    denoiser_config:\n      params:\n        scaling_config:\n"
     "          target: sgm.modules.diffusionmodules.denoiser_scaling.VScaling\n", "v_prediction", False),
    ("model:\n  params:\n    parameterization: v\n    use_ztsnr: true\n", "v_prediction", True),
    ("zero_snr: 1\n", "epsilon", False),  # only a real true counts
])
def test_yaml_sidecars(tmp_path, yaml_text, kind, zero_snr):
    (tmp_path / "model.yaml").write_text(yaml_text)
    found = predictions.from_sidecar(tmp_path / "model.safetensors")
    assert (found.prediction_type, found.zero_snr, found.source) == (kind, zero_snr, "model.yaml")


def test_bad_choices_are_named():
    with pytest.raises(RequestError, match="noise_schedule|Unknown noise schedule"):
        _request(noise_schedule="Sideways").validate()
    with pytest.raises(RequestError, match="cfg_rescale"):
        _request(cfg_rescale=1.5).validate()
