"""LoRA, textual-inversion embeddings, styles and VAEs on the tiny model, through the engine."""

import copy

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import NotFoundError
from engine.output.infotext import parse
from engine.request import GenerationRequest
from engine.prompts.styles import Style
from engine.models.tiny_models import build_tiny_pipeline
from tests.conftest import make_engine
from tests.support.ldm_export import vae_to_ldm
from tests.support.lora_files import write_kohya_lora

BASE = GenerationRequest(prompt="a red cube", steps=3, width=64, height=64, sampler_name="Euler",
                         seed=11, save_images=False, save_grid=False)


@pytest.fixture(scope="module")
def addon_engine(tiny_models, tmp_path_factory):
    engine = make_engine(tiny_models, tmp_path_factory.mktemp("addons"))
    yield engine
    engine.shutdown()


def image_bytes(engine, **changes) -> bytes:
    return engine.generate(BASE.replace(**changes)).images[0].tobytes()


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
    pipe = addon_engine.models.current.base
    assert not any(pipe.get_list_adapters().values())
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


def test_clip_skip_comes_from_settings_or_the_request_and_is_written_when_above_1(addon_engine):
    one = addon_engine.generate(BASE)
    assert "Clip skip" not in parse(one.infotexts[0])[2]
    two = addon_engine.generate(BASE.replace(clip_skip=2))
    assert parse(two.infotexts[0])[2]["Clip skip"] == "2"
    assert two.images[0].tobytes() != one.images[0].tobytes()
    addon_engine.settings.update({"CLIP_stop_at_last_layers": 2})
    try:
        assert addon_engine.generate(BASE).images[0].tobytes() == two.images[0].tobytes()
    finally:
        addon_engine.settings.update({"CLIP_stop_at_last_layers": 1})


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
        assert not any(pipe.get_list_adapters().values())
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
