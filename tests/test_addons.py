"""LoRA, textual-inversion embeddings, styles and VAEs on the tiny model, through the engine."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.errors import NotFoundError
from engine.output.infotext import parse
from engine.request import GenerationRequest
from engine.prompts.styles import Style
from engine.models.tiny_models import build_tiny_pipeline
from tests.conftest import make_engine
from tests.support.ldm_export import export_single_file, vae_to_ldm
from tests.support.lora_files import kohya_lora_state_dict, merge_kohya_lora, write_kohya_lora

BASE = GenerationRequest(prompt="a red cube", steps=3, width=64, height=64, sampler_name="Euler",
                         seed=11, save_images=False, save_grid=False)


@pytest.fixture(scope="module")
def addon_engine(tiny_models, tmp_path_factory):
    engine = make_engine(tiny_models, tmp_path_factory.mktemp("addons"))
    yield engine
    engine.shutdown()


def image_bytes(engine, **changes) -> bytes:
    return engine.generate(BASE.replace(**changes)).images[0].tobytes()


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# LoRA


@pytest.fixture(scope="module")
def lora(addon_engine):
    pipe = addon_engine.models.current.base
    path = addon_engine.addons.loras.folder / "shiny.safetensors"
    write_kohya_lora(pipe, path, metadata={"ss_output_name": "shiny_v1"})
    write_kohya_lora(pipe, path.with_name("other.safetensors"), seed=5)
    addon_engine.addons.loras.refresh()
    return path


def test_lora_changes_the_image_at_weight_1_not_at_0_and_is_unloaded_after(addon_engine, lora):
    before = image_bytes(addon_engine)
    with_lora = addon_engine.generate(BASE.replace(prompt="a red cube <lora:shiny:1>"))
    assert with_lora.images[0].tobytes() != before
    assert image_bytes(addon_engine, prompt="a red cube <lora:shiny:0>") == before
    assert image_bytes(addon_engine) == before, "the LoRA must be gone after its job"
    params = parse(with_lora.infotexts[0])[2]
    assert params["Lora hashes"].startswith("shiny: ") and len(params["Lora hashes"]) == len("shiny: ") + 12
    assert parse(with_lora.infotexts[0])[0] == "a red cube <lora:shiny:1>"


def test_text_encoder_and_unet_weights_separately_and_several_loras(addon_engine, lora):
    before = image_bytes(addon_engine)
    te_only = image_bytes(addon_engine, prompt="a red cube <lora:shiny:1:0>")
    unet_only = image_bytes(addon_engine, prompt="a red cube <lora:shiny:0:1>")
    assert len({before, te_only, unet_only}) == 3
    one = image_bytes(addon_engine, prompt="a red cube <lora:shiny:1>")
    both = addon_engine.generate(BASE.replace(prompt="a red cube <lora:shiny:1> <lora:other:0.8>"))
    assert both.images[0].tobytes() != one
    assert "other: " in parse(both.infotexts[0])[2]["Lora hashes"]
    assert image_bytes(addon_engine) == before


def test_unknown_lora_is_reported_not_a_crash(addon_engine, lora):
    result = addon_engine.generate(BASE.replace(prompt="a red cube <lora:missing:1>"))
    assert result.warnings == ["LoRA not found: missing"]
    assert result.images[0].tobytes() == image_bytes(addon_engine)


def test_lora_found_by_its_trainer_alias(addon_engine, lora):
    assert addon_engine.addons.loras.find("shiny_v1").name == "shiny"


def test_a_lora_makes_the_picture_of_its_weights_merged_by_hand(addon_engine, tiny_models, tmp_path):
    """Not only "the picture changed": a LoRA (alpha half its rank, the text encoder's and the
    UNet's weights apart) must make the picture of a checkpoint with W + weight * up @ down *
    alpha / rank merged into its weights by hand, loaded as a plain checkpoint."""
    te_weight, unet_weight = 0.6, 1.3
    state = kohya_lora_state_dict(tiny_models.reference_pipeline("sd1"), seed=3, alpha=2.0)  # alpha/rank 0.5
    save_file(state, str(addon_engine.addons.loras.folder / "halved.safetensors"))
    addon_engine.addons.loras.refresh()
    with_lora = addon_engine.generate(BASE.replace(prompt=f"a red cube <lora:halved:{te_weight}:{unet_weight}>"))
    plain = addon_engine.generate(BASE)

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    merged_models = dataclasses.replace(tiny_models, models_dir=models_dir)
    for name, weights in (("merged", (te_weight, unet_weight)), ("alpha-ignored", (2 * te_weight, 2 * unet_weight)),
                          ("weights-swapped", (unet_weight, te_weight))):
        pipe = tiny_models.reference_pipeline("sd1")
        assert merge_kohya_lora(pipe, state, *weights) == len(state) // 3
        export_single_file(pipe, models_dir / f"{name}.safetensors", "sd1")
    by_hand = make_engine(merged_models, tmp_path / "data", checkpoint="merged")
    try:
        expected = by_hand.generate(BASE)
        by_hand.load_checkpoint("alpha-ignored").outcome()
        alpha_ignored = by_hand.generate(BASE)
        by_hand.load_checkpoint("weights-swapped").outcome()
        weights_swapped = by_hand.generate(BASE)
    finally:
        by_hand.shutdown()

    # Merged or applied alongside, the arithmetic rounds differently: a pixel or two at most.
    difference = np.abs(pixels(with_lora.images[0]) - pixels(expected.images[0]))
    assert difference.max() <= 3, f"the LoRA's picture is {difference.max()} away from the merge by hand"
    # And the check can tell a LoRA applied wrongly: each mistake is far outside that.
    for wrong in (plain, alpha_ignored, weights_swapped):
        assert np.abs(pixels(with_lora.images[0]) - pixels(wrong.images[0])).max() > 10


# Textual-inversion embeddings


def _token_vector(pipe, word: str) -> torch.Tensor:
    ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()


@pytest.mark.parametrize("layout", ["a1111.pt", "emb_params.safetensors", "diffusers.bin"])
def test_embedding_in_each_layout_stands_for_its_vectors(addon_engine, layout, tmp_path):
    """An embedding holding the vectors of the word 'red' must act exactly like the word."""
    pipe = addon_engine.models.current.base
    vectors = _token_vector(pipe, "red")
    folder = addon_engine.addons.embeddings.folders[0]
    name = "redword" + layout.split(".")[0]
    kind, suffix = layout.split(".")
    path = folder / f"{name}.{suffix}"
    if kind == "a1111":
        torch.save({"string_to_param": {"*": vectors}, "string_to_token": {"*": 265},
                    "name": name, "step": 100}, path)
    elif kind == "emb_params":
        save_file({"emb_params": vectors.contiguous()}, str(path))
    else:
        torch.save({f"<{name}>": vectors[0] if vectors.shape[0] == 1 else vectors}, path)
    try:
        word = addon_engine.generate(BASE.replace(prompt="a (red:1.3) cube"))
        embedded = addon_engine.generate(BASE.replace(prompt=f"a ({name}:1.3) cube"))
        assert embedded.images[0].tobytes() == word.images[0].tobytes()
        hashes = parse(embedded.infotexts[0])[2]["TI hashes"]
        assert hashes.startswith(f"{name}: ") and len(hashes) == len(name) + 2 + 12
    finally:
        path.unlink()


def test_embeddings_for_another_model_family_are_listed_as_skipped(addon_engine):
    folder = addon_engine.addons.embeddings.folders[0]
    save_file({"emb_params": torch.randn(2, 768)}, str(folder / "sd15thing.safetensors"))
    save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)},
              str(folder / "xlthing.safetensors"))
    (folder / "broken.pt").write_bytes(b"not a pickle")
    try:
        listing = addon_engine.addons.embeddings.api_listing(addon_engine.models.current)
        assert listing["loaded"] == {}
        assert "does not match" in listing["skipped"]["sd15thing"]["reason"]
        assert "SDXL" in listing["skipped"]["xlthing"]["reason"]
        assert "broken" in listing["skipped"]
    finally:
        for name in ("sd15thing.safetensors", "xlthing.safetensors", "broken.pt"):
            (folder / name).unlink()


# Styles


def test_styles_apply_to_the_prompt_and_round_trip_through_styles_csv(addon_engine):
    store = addon_engine.addons.styles
    store.save(Style("Painterly", "{prompt}, oil painting", "photo, blurry"))
    store.save(Style("Moody", "dark, dramatic", ""))
    result = addon_engine.generate(BASE.replace(prompt="a red cube", styles=("Painterly", "Moody")))
    prompt, negative, _ = parse(result.infotexts[0])
    assert prompt == "a red cube, oil painting, dark, dramatic"
    assert negative == "photo, blurry"
    same = addon_engine.generate(BASE.replace(prompt="a red cube, oil painting, dark, dramatic",
                                              negative_prompt="photo, blurry"))
    assert same.images[0].tobytes() == result.images[0].tobytes()
    assert "Painterly" in store.path.read_text()
    # A style that no longer exists is left out (as in the ecosystem), and the result says so.
    missing = addon_engine.generate(BASE.replace(prompt="a red cube", styles=("Moody", "Nope")))
    assert parse(missing.infotexts[0])[0] == "a red cube, dark, dramatic"
    assert "Style not found, left out: 'Nope'" in missing.warnings


# VAE and clip skip


def test_a_vae_file_replaces_the_checkpoints_vae_and_is_named_in_the_infotext(addon_engine,
                                                                              tiny_models):
    other = build_tiny_pipeline("sd1", addon_engine.models.current.base.tokenizer, seed=99).vae
    path = addon_engine.addons.vaes.folder / "bright.vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae_to_ldm(other).items()}, str(path))
    addon_engine.addons.vaes.refresh()
    own = image_bytes(addon_engine)
    swapped = addon_engine.generate(BASE.replace(vae="bright.vae.safetensors"))
    assert swapped.images[0].tobytes() != own
    params = parse(swapped.infotexts[0])[2]
    assert params["VAE"] == "bright.vae.safetensors" and len(params["VAE hash"]) == 10
    assert image_bytes(addon_engine, vae="None") == own
    with pytest.raises(NotFoundError, match="VAE not found"):
        addon_engine.submit(BASE.replace(vae="nope.safetensors"))

    # Not only "the picture changed": it is plain diffusers' picture with that VAE, from the same
    # seed's latents through the same sampler.
    request = BASE.replace(randn_source="CPU")
    swapped = addon_engine.generate(request.replace(vae="bright.vae.safetensors")).images[0]
    own = addon_engine.generate(request).images[0]
    expected = plain_diffusers_picture(tiny_models, request, vae=other)
    difference = np.abs(pixels(swapped) - pixels(expected))
    # On some CPUs a value may round differently (see test_loading): a pixel off by one.
    assert difference.max() <= 1, f"{difference.max()} away from diffusers with the same VAE"
    assert np.abs(pixels(own) - pixels(expected)).max() > 10, "the check could not tell the VAEs apart"


def plain_diffusers_picture(tiny_models, request, vae=None):
    """`request`'s txt2img picture made by diffusers' own StableDiffusionPipeline (Euler over
    linspace timesteps, the engine's CPU noise for the seed) on tiny-sd1's weights, with `vae`
    in place of its own when given."""
    from diffusers import EulerDiscreteScheduler

    reference = tiny_models.reference_pipeline("sd1")
    reference.set_progress_bar_config(disable=True)
    if vae is not None:
        reference.vae = vae
    reference.scheduler = EulerDiscreteScheduler.from_config(reference.scheduler.config, timestep_spacing="linspace")
    latents = torch.randn((1, 4, request.height // 8, request.width // 8),
                          generator=torch.Generator().manual_seed(request.seed))
    return reference(request.prompt, negative_prompt=request.negative_prompt or None,
                     num_inference_steps=request.steps, width=request.width, height=request.height,
                     guidance_scale=request.cfg_scale, latents=latents).images[0]


def test_clip_skip_comes_from_settings_or_the_request_and_is_written_when_above_1(addon_engine):
    one = addon_engine.generate(BASE)
    assert "Clip skip" not in parse(one.infotexts[0])[2]
    two = addon_engine.generate(BASE.replace(clip_skip=2))
    assert parse(two.infotexts[0])[2]["Clip skip"] == "2"
    assert two.images[0].tobytes() != one.images[0].tobytes()
    before = addon_engine.settings["CLIP_stop_at_last_layers"]
    addon_engine.settings.update({"CLIP_stop_at_last_layers": 2})
    try:
        assert addon_engine.generate(BASE).images[0].tobytes() == two.images[0].tobytes()
    finally:
        addon_engine.settings.update({"CLIP_stop_at_last_layers": before})


def test_an_fp16_vae_that_overflows_is_decoded_in_fp32(tiny_models):
    from engine.networks.vae import decode

    vae = tiny_models.reference_pipeline("sd1").vae
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(3e4)  # fine in fp32, inf/NaN in fp16
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    vae.half()
    with torch.no_grad():
        assert torch.isnan(vae.decode(latents / vae.config.scaling_factor).sample).any()
        # What the fp16 weights give when computed in fp32.
        expected = copy.deepcopy(vae).float().decode(latents.float() / vae.config.scaling_factor).sample
    images = decode(vae, latents)
    assert not torch.isnan(images).any()
    assert vae.dtype == torch.float32, "it stays fp32 for the rest of the session"
    assert torch.allclose(images, expected, atol=1e-4)


def test_sdxl_lora_and_embedding_use_both_text_encoders(tiny_models, tmp_path):
    engine = make_engine(tiny_models, tmp_path, checkpoint="tiny-sdxl")
    try:
        pipe = engine.models.current.base
        write_kohya_lora(pipe, engine.addons.loras.folder / "xl.safetensors")
        engine.addons.loras.refresh()
        before = image_bytes(engine)
        with_lora = engine.generate(BASE.replace(prompt="a red cube <lora:xl:1>"))
        assert with_lora.images[0].tobytes() != before
        assert image_bytes(engine) == before

        ids = pipe.tokenizer("red", add_special_tokens=False).input_ids
        vectors = {"clip_l": pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone(),
                   "clip_g": pipe.text_encoder_2.get_input_embeddings().weight[ids].detach().clone()}
        save_file(vectors, str(engine.addons.embeddings.folders[0] / "xlred.safetensors"))
        word = image_bytes(engine, prompt="a (red:1.2) cube")
        assert image_bytes(engine, prompt="a (xlred:1.2) cube") == word
    finally:
        engine.shutdown()


def test_sd2_weighted_long_prompt_generates(tiny_models, tmp_path):
    engine = make_engine(tiny_models, tmp_path, checkpoint="tiny-sd2")
    try:
        prompt = "(a red cube:1.4), " + ", ".join(["[x]"] * 90)
        weighted = engine.generate(BASE.replace(prompt=prompt, clip_skip=2))
        plain = engine.generate(BASE.replace(prompt="a red cube"))
        assert weighted.images[0].tobytes() != plain.images[0].tobytes()
        assert parse(weighted.infotexts[0])[2]["Clip skip"] == "2"
    finally:
        engine.shutdown()
