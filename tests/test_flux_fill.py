"""FLUX.1 Fill (inpainting and outpainting) and SD 3 Medium (3.0), from the single files users
download, through ModelManager and the studio's generation run, on tiny models:

* a Fill transformer in BFL's layout loads as an inpainting model (its text encoders and VAE
  picked beside it); an inpaint job's picture equals diffusers' FluxFillPipeline from the same
  noise, mask, prompt and schedule (diffusers told to keep the unmasked latents on their flow
  line, as the studio does the A1111 way), and keeps the unmasked pixels; the Outpainting script
  hands Fill the grown area as its mask; txt2img on it is an inpaint of an empty canvas;
* an SD 3 Medium all-in-one file (24 joint blocks, no second attention, no q/k norms) loads and
  its picture equals diffusers' StableDiffusion3Pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux import pipeline_flux_fill
from PIL import Image

from engine.addons import AddOns
from engine.engine import Engine
from engine.families import family_of
from engine.files import HashCache
from engine.models.pipelines import ModelManager
from engine.models.registry import ModelRegistry
from engine.models.tiny_flow_models import build_tiny_flow_components
from engine.devices import DeviceConfig
from engine.output.writer import OutputWriter
from engine.request import GenerationRequest, Img2ImgOptions, ScriptChoice
from engine.sampling.schedules import schedule_sigmas
from engine.settings.store import Settings
from tests.support.flow_runs import first_noise, pixels, run_job
from tests.support.flow_pipelines import tiny_flow_pipeline
from tests.support.flow_tree import write_config_root
from tests.support.flow_writers import assert_same_weights, encoder_state, single_file_state, write
from tests.support.ldm_export import vae_to_ldm

SEED = 9
PROMPT = "a red fox in the snow"
FILL_FILE, SD3_FILE = "flux1-fill-dev", "sd3_medium_incl_clips_t5xxlfp16"
BOX = (8, 16, 40, 56)   # the repainted box; on 8-pixel blocks, so its latent mask is exact


@pytest.fixture(autouse=True)
def offline(no_network):
    """Everything comes from the files and config folders written here."""


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """models/Stable-diffusion: the Fill transformer alone (bare BFL keys, as BFL publish it) and
    SD 3 Medium with every part; models/text_encoder: clip_l, t5xxl_fp16; models/VAE: ae."""
    root = tmp_path_factory.mktemp("fill-tree")
    tiny = {layout: build_tiny_flow_components(layout, seed=SEED) for layout in ("flux-fill", "sd3-medium")}
    configs = write_config_root(tiny, root / "configs")
    ckpts, encoders, vaes = (root / "models" / name for name in ("Stable-diffusion", "text_encoder", "VAE"))
    fill, medium = tiny["flux-fill"], tiny["sd3-medium"]
    write(single_file_state("flux", fill, vae=False, prefix=""), ckpts / f"{FILL_FILE}.safetensors")
    write(single_file_state("sd3", medium, ("clip_l", "clip_g", "t5xxl")), ckpts / f"{SD3_FILE}.safetensors")
    write(encoder_state(fill["text_encoder"]), encoders / "clip_l.safetensors")
    write(encoder_state(fill["text_encoder_2"]), encoders / "t5xxl_fp16.safetensors")
    write(vae_to_ldm(fill["vae"]), vaes / "ae.safetensors")
    return root, tiny, configs


def _manager(root, configs) -> ModelManager:
    registry = ModelRegistry([root / "models" / "Stable-diffusion"], HashCache(root / "cache.json"))
    return ModelManager(registry, DeviceConfig.choose(use_cpu=True), config_root=configs)


@pytest.fixture(scope="module")
def fill(tree):
    root, _, configs = tree
    return _manager(root, configs).load(FILL_FILE)


@pytest.fixture(scope="module")
def addons(tmp_path_factory):
    data = tmp_path_factory.mktemp("fill-addons")
    return AddOns.in_data_dir(data, HashCache(data / "cache.json"))


def _run(model, addons, **fields):
    return run_job(model, addons, **{"prompt": PROMPT, **fields})


_first_noise, _pixels = first_noise, pixels


def _picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _box_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, BOX)
    return mask


@pytest.fixture
def vae_mode(monkeypatch):
    """diffusers' Fill pipeline samples the VAE's posterior for the masked picture; the studio
    (as A1111) takes its mode: the reference is told to take the mode too."""
    monkeypatch.setattr(pipeline_flux_fill, "retrieve_latents",
                        lambda output, generator=None, sample_mode="sample": output.latent_dist.mode())


def test_the_fill_file_loads_as_an_inpainting_model(fill, tree):
    from diffusers import FluxFillPipeline
    _, tiny, _ = tree
    assert fill.family == "flux" and fill.is_inpainting and isinstance(fill.base, FluxFillPipeline)
    assert fill.base.transformer.config.in_channels == 384 and fill.base.transformer.config.out_channels == 64
    assert fill.module_files == ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors")
    assert_same_weights(tiny["flux-fill"]["transformer"].state_dict(), fill.base.transformer.state_dict())
    defaults = family_of("flux").defaults(fill.base)
    assert (defaults.distilled_cfg_scale, defaults.cfg_scale, defaults.steps) == (30.0, 1.0, 20)


def test_the_fill_conditioning_is_laid_out_as_diffusers_lays_it_out():
    """Any mask, to the pixel, on a picture wider than high: packed with the latents, the
    studio's conditioning is FluxFillPipeline's masked-picture latents and mask, in its order."""
    from diffusers import FluxPipeline
    pipe = tiny_flow_pipeline("flux-fill", seed=SEED)
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(1, 16, 8, 12, generator=generator)          # the VAE's output for the masked picture
    mask = (torch.rand(1, 1, 64, 96, generator=generator) > 0.5).float()
    packed_mask, packed_picture = pipe.prepare_mask_latents(mask, raw, 1, 16, 1, 64, 96, torch.float32,
                                                            torch.device("cpu"), None)
    scaled = (raw - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    ours = family_of("flux").image_conditioning(scaled, mask)
    assert ours.shape == (1, 16 + 64, 8, 12)
    torch.testing.assert_close(FluxPipeline._pack_latents(ours, 1, 80, 8, 12),
                               torch.cat([packed_picture, packed_mask], dim=-1), rtol=0, atol=0)


def test_an_inpaint_equals_flux_fill_pipeline_and_keeps_the_rest(fill, addons, vae_mode):
    init, mask = _picture(1), _box_mask()
    run, result = _run(fill, addons, mode="img2img", distilled_cfg_scale=30.0,
                       img2img=Img2ImgOptions(init_images=(init,), mask=mask, denoising_strength=1.0, mask_blur=0,
                                              inpainting_fill=1))
    pipe = tiny_flow_pipeline("flux-fill", seed=SEED)
    vae = pipe.vae
    pixels = torch.from_numpy(np.asarray(init, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        latents = (vae.encode(pixels).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
    noise = _first_noise(run)
    keep = torch.ones(1, 16, 8, 8)
    keep[..., BOX[1] // 8:BOX[3] // 8, BOX[0] // 8:BOX[2] // 8] = 0
    packed_init, packed_noise, packed_keep = (pipe._pack_latents(t, 1, 16, 8, 8) for t in (latents, noise, keep))

    def keep_unmasked(pipe, index, timestep, tensors):
        # The studio blends the unmasked latents back at every step (A1111's inpainting): there
        # they stay on the straight flow line from the picture to the first noise.
        sigma = pipe.scheduler.sigmas[index + 1]
        line = packed_init * (1 - sigma) + packed_noise * sigma
        return {"latents": tensors["latents"] * (1 - packed_keep) + line * packed_keep}

    reference = pipe(PROMPT, image=init, mask_image=mask, latents=packed_noise, num_inference_steps=4,
                     guidance_scale=30.0, height=64, width=64, max_sequence_length=256,
                     callback_on_step_end=keep_unmasked).images[0]
    ours = _pixels(result.images[0])
    inside = (slice(BOX[1], BOX[3]), slice(BOX[0], BOX[2]))
    assert np.abs(ours[inside] - _pixels(reference)[inside]).max() <= 1
    outside = np.ones((64, 64), dtype=bool)
    outside[inside] = False
    assert np.array_equal(ours[outside], _pixels(init)[outside])   # the unmasked part kept
    assert np.abs(ours[inside] - _pixels(init)[inside]).mean() > 10
    assert "Denoising strength: 1," in result.infotexts[0] and "Distilled CFG Scale: 30," in result.infotexts[0]


def test_txt2img_on_fill_is_an_inpaint_of_an_empty_canvas(fill, addons, vae_mode):
    # No Distilled CFG Scale given (an API call leaving it out): Fill's own, 30, not dev's 3.5.
    run, result = _run(fill, addons)
    assert run.request.distilled_cfg_scale is None and "Distilled CFG Scale: 30," in result.infotexts[0]
    pipe = tiny_flow_pipeline("flux-fill", seed=SEED)
    # All masked: diffusers blanks the whole picture, whatever it is, before encoding it.
    reference = pipe(PROMPT, image=_picture(2), mask_image=Image.new("L", (64, 64), 255),
                     latents=pipe._pack_latents(_first_noise(run), 1, 16, 8, 8), num_inference_steps=4,
                     guidance_scale=30.0, height=64, width=64, max_sequence_length=256).images[0]
    assert np.abs(_pixels(result.images[0]) - _pixels(reference)).max() <= 1


def _recorded_inputs(model):
    """The packed inputs of each transformer call, while the block runs."""
    seen, original = [], model.base.transformer.forward

    def record(*args, **kwargs):
        seen.append(kwargs["hidden_states"].clone())
        return original(*args, **kwargs)

    return seen, record


@pytest.fixture(scope="module")
def engine(tree, tmp_path_factory):
    root, _, configs = tree
    data = tmp_path_factory.mktemp("fill-engine")
    hashes = HashCache(data / "cache.json")
    engine = Engine(_manager(root, configs), OutputWriter(data / "outputs"), Settings(data / "config.json"),
                    AddOns.in_data_dir(data, hashes))
    engine.load_checkpoint(FILL_FILE).outcome()
    yield engine
    engine.shutdown()


def test_outpainting_hands_fill_the_grown_area_as_its_mask(engine):
    from diffusers import FluxPipeline
    model = engine.models.current
    seen, record = _recorded_inputs(model)
    picture = _picture(3)
    request = GenerationRequest(mode="img2img", prompt=PROMPT, steps=3, width=64, height=64, sampler_name="Euler",
                                seed=5, cfg_scale=1.0, save_images=False, save_grid=False,
                                img2img=Img2ImgOptions(init_images=(picture,), denoising_strength=1.0),
                                script=ScriptChoice("Outpainting", {"pixels": 32, "mask_blur": 0,
                                                                    "inpainting_fill": "original",
                                                                    "directions": ["right"]}))
    model.base.transformer.forward = record
    try:
        (image,) = engine.generate(request).images
    finally:
        del model.base.transformer.forward
    assert image.size == (96, 64)
    grown = _pixels(image)
    assert np.array_equal(grown[:, :64], _pixels(picture))   # the picture as it was
    assert grown[:, 64:].std() > 5
    # The last 256 of Fill's 384 inputs per patch: the mask's 8x8 pixel blocks, packed 2x2.
    packed = seen[0]
    assert packed.shape == (1, (64 // 16) * (96 // 16), 384)
    mask = torch.nn.functional.pixel_shuffle(FluxPipeline._unpack_latents(packed[..., 128:], 64, 96, 8), 8)
    expected = torch.zeros(1, 1, 64, 96)
    expected[..., 64:] = 1
    assert torch.equal(mask, expected)


def test_outpainting_mk2_grows_the_picture_on_fill(engine):
    picture = _picture(4)
    request = GenerationRequest(mode="img2img", prompt=PROMPT, steps=2, width=64, height=64, sampler_name="Euler",
                                seed=6, cfg_scale=1.0, save_images=False, save_grid=False,
                                img2img=Img2ImgOptions(init_images=(picture,), denoising_strength=0.8),
                                script=ScriptChoice("Outpainting mk2", {"pixels": 64, "mask_blur": 2,
                                                                        "direction": ["down"]}))
    (image,) = engine.generate(request).images
    assert image.size == (64, 128)
    grown = _pixels(image)
    assert np.abs(grown[:48] - _pixels(picture)[:48]).max() <= 2   # away from the seam: as it was
    assert grown[72:].std() > 5


@pytest.fixture(scope="module")
def sd3_medium(tree):
    root, _, configs = tree
    return _manager(root, configs).load(SD3_FILE, modules=())


def test_sd3_medium_loads_and_equals_sd3_pipeline(sd3_medium, tree, addons):
    from engine.models.loading import flow_model_of
    _, tiny, _ = tree
    assert sd3_medium.family == "sd3" and not sd3_medium.is_inpainting
    assert flow_model_of(sd3_medium.info).variant == "SD 3 Medium"
    config = sd3_medium.base.transformer.config
    assert (config.num_layers, config.qk_norm, tuple(config.dual_attention_layers)) == (24, None, ())
    assert_same_weights(tiny["sd3-medium"]["transformer"].state_dict(), sd3_medium.base.transformer.state_dict())
    run, result = _run(sd3_medium, addons, negative_prompt="blurry", cfg_scale=4.5, steps=5)
    pipe = tiny_flow_pipeline("sd3-medium", seed=SEED)
    # diffusers' scheduler shifts the sigmas it is given: it gets the unshifted times.
    sigmas = schedule_sigmas("Simple", 5, run.model.sigma_table(shift=1.0))
    reference = pipe(PROMPT, negative_prompt="blurry", latents=_first_noise(run), num_inference_steps=5,
                     sigmas=sigmas[:-1].tolist(), guidance_scale=4.5, height=64, width=64,
                     max_sequence_length=256).images[0]
    assert np.abs(_pixels(result.images[0]) - _pixels(reference)).max() <= 1


def test_hires_fix_and_batches_run_on_fill(fill, addons):
    _, result = _run(fill, addons, batch_size=2, steps=2, extensions={"hires_fix": {
        "enabled": True, "denoising_strength": 0.6, "scale": 2.0, "upscaler": "Latent", "steps": 2}})
    first, second = (_pixels(image) for image in result.images)
    assert first.shape == (128, 128, 3) and not np.array_equal(first, second)


def test_a_fill_file_against_a_config_of_other_inputs_is_named(tree, tmp_path):
    import json
    from engine.errors import CheckpointError
    from engine.models.flow_loading import load_flux_transformer
    root, _, configs = tree
    config = json.loads((configs / "flux-fill" / "transformer" / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "config.json").write_text(json.dumps({**config, "in_channels": 64, "out_channels": None}))
    path = root / "models" / "Stable-diffusion" / f"{FILL_FILE}.safetensors"
    with pytest.raises(CheckpointError, match="taking 384 input channels, but its config .* describes 64"):
        load_flux_transformer(path, tmp_path)


def test_a_fill_diffusers_folder_loads_as_an_inpainting_model(tree, tmp_path):
    from diffusers import FluxFillPipeline
    root, tiny, configs = tree
    folder = tmp_path / "models" / "FLUX.1-Fill-dev-tiny"
    tiny_flow_pipeline("flux-fill", seed=SEED).save_pretrained(folder)
    registry = ModelRegistry([folder.parent], HashCache(tmp_path / "cache.json"))
    model = ModelManager(registry, DeviceConfig.choose(use_cpu=True), config_root=configs).load("FLUX.1-Fill-dev-tiny")
    assert isinstance(model.base, FluxFillPipeline) and model.is_inpainting
    assert_same_weights(tiny["flux-fill"]["transformer"].state_dict(), model.base.transformer.state_dict())
