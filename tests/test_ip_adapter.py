"""IP-Adapter units: reference pictures steer the picture through diffusers' IP-Adapter attention,
with tiny adapters and CLIP image encoders saved in the layouts users download (tests/support/
ip_adapter_files.py), loaded offline. Checked against diffusers' own IP-Adapter path, the unit's
weight and window, averaging, several units with a ControlNet, the UNet restored, and refusals."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.controlnet import ip_adapter
from engine.controlnet.tiny_controlnets import build_tiny_controlnet, save_original_layout
from engine.controlnet.units import ControlUnit
from engine.errors import UserError
from engine.request import GenerationRequest
from tests.support.addon_engines import engine_over
from tests.support.ip_adapter_files import (
    write_encoder_file,
    write_encoder_folder,
    write_ip_adapter,
    write_sdxl_shaped_ip_adapter,
)

BASE = GenerationRequest(prompt="a house", steps=4, width=64, height=64, sampler_name="Euler", seed=11,
                         save_images=False, save_grid=False)


def picture(colour="red", shape="square") -> Image.Image:
    image = Image.new("RGB", (48, 40), "white")
    draw = ImageDraw.Draw(image)
    if shape == "square":
        draw.rectangle((8, 8, 38, 30), fill=colour)
    else:
        draw.ellipse((4, 4, 44, 36), fill=colour)
    return image


@pytest.fixture(scope="module")
def ip_data(engine, tmp_path_factory):
    data = tmp_path_factory.mktemp("ipadapter")
    unet = engine.models.require().base.unet
    models = data / "models"
    write_ip_adapter(unet, models / "ControlNet" / "ip-adapter_sd15.safetensors", "plain", seed=1)
    write_ip_adapter(unet, models / "ipadapter" / "ip-adapter-plus_sd15.safetensors", "plus", seed=2)
    write_ip_adapter(unet, models / "ControlNet" / "ip-adapter-faceid_sd15.safetensors", "faceid", seed=3)
    write_sdxl_shaped_ip_adapter(models / "ControlNet" / "ip-adapter_sdxl.safetensors")
    write_encoder_folder(models / "ControlNet" / "annotators" / "clip_vision" / "clip_h")
    save_original_layout(build_tiny_controlnet(unet, seed=1), models / "ControlNet" / "tiny-cn.safetensors")
    return data


@pytest.fixture(scope="module")
def ip_engine(engine, ip_data):
    return engine_over(engine, ip_data)


def unit(**fields) -> ControlUnit:
    values = {"enabled": True, "module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15", "image": picture()}
    values.update(fields)
    return ControlUnit(**values)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_ip_adapters_are_recognised_and_listed_with_their_family(ip_engine):
    library = ip_engine.addons.controlnets
    names = library.names()
    assert {"ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter_sdxl", "tiny-cn"} <= set(names)
    assert library.is_ip_adapter("ip-adapter_sd15") and library.is_ip_adapter("ip-adapter-plus_sd15")
    assert not library.is_ip_adapter("tiny-cn")
    assert library.family("ip-adapter_sd15") == "sd1" and library.family("ip-adapter_sdxl") == "sdxl"
    assert "clip_vision" not in " ".join(names)  # the encoder is no model of the list


def test_one_name_in_both_folders_keeps_both(engine, tmp_path):
    from engine.controlnet.models import ControlNetLibrary

    unet = engine.models.require().base.unet
    write_ip_adapter(unet, tmp_path / "ControlNet" / "ip-adapter_sd15.safetensors", seed=1)
    write_ip_adapter(unet, tmp_path / "ipadapter" / "ip-adapter_sd15.safetensors", seed=2)
    library = ControlNetLibrary(tmp_path / "ControlNet", engine.addons.controlnets.device_config)
    assert library.names() == ["ip-adapter_sd15.safetensors", "ipadapter/ip-adapter_sd15.safetensors"]
    assert library.entry("ipadapter/ip-adapter_sd15.safetensors").path == tmp_path / "ipadapter" / "ip-adapter_sd15.safetensors"
    assert library.entry("ip-adapter_sd15.safetensors").path == tmp_path / "ControlNet" / "ip-adapter_sd15.safetensors"


def test_module_availability_follows_the_image_encoders(ip_data, tmp_path):
    from engine.controlnet import preprocessors

    table = {name: (ok, reason) for name, ok, reason in preprocessors.availability(ip_data / "models")}
    assert table["ip-adapter_clip_sd15"] == (True, "") and table["ip-adapter-auto"] == (True, "")
    assert not table["ip-adapter_clip_sdxl"][0] and "clip_g.safetensors" in table["ip-adapter_clip_sdxl"][1]
    assert not table["ip-adapter_face_id_plus"][0] and "insightface" in table["ip-adapter_face_id_plus"][1]
    bare = {name: (ok, reason) for name, ok, reason in preprocessors.availability(tmp_path / "models")}
    assert not bare["ip-adapter-auto"][0]
    assert "clip_h" in bare["ip-adapter-auto"][1] and "clip_g" in bare["ip-adapter-auto"][1]
    reference = picture()
    shown = preprocessors.run("ip-adapter_clip_h", reference, models_dir=ip_data / "models")
    assert shown.tobytes() == reference.tobytes()  # the map shown is the reference picture


def test_a_unit_changes_the_picture_weight_zero_is_none_and_the_unet_is_restored(ip_engine):
    unet = ip_engine.models.require().base.unet
    before = dict(unet.attn_processors)
    plain = ip_engine.generate(BASE)
    red = ip_engine.generate(BASE.replace(controlnet_units=(unit(),)))
    blue = ip_engine.generate(BASE.replace(controlnet_units=(unit(image=picture("blue", "oval")),)))
    assert np.abs(pixels(red) - pixels(plain)).mean() > 0.5
    assert np.abs(pixels(red) - pixels(blue)).mean() > 0.2
    weightless = ip_engine.generate(BASE.replace(controlnet_units=(unit(weight=0.0),)))
    assert weightless.images[0].tobytes() == plain.images[0].tobytes()
    assert all(unet.attn_processors[name] is processor for name, processor in before.items())
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert ip_engine.generate(BASE).images[0].tobytes() == plain.images[0].tobytes()
    assert 'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15, Weight: 1' in red.infotexts[0]


def _diffusers_pipeline(pipe, encoder_folder, state):
    """A StableDiffusionPipeline over `pipe`'s modules (its UNet shared) with diffusers' own
    IP-Adapter loaded from `state` and the encoder folder's CLIPVisionModelWithProjection."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_folder), local_files_only=True)
    reference = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                        unet=pipe.unet, scheduler=pipe.scheduler, safety_checker=None,
                                        feature_extractor=ip_adapter.image_processor(encoder.config.image_size),
                                        image_encoder=encoder, requires_safety_checker=False)
    reference.load_ip_adapter(state, subfolder="", weight_name="unused", image_encoder_folder=None)
    return reference


def _reference_unet_output(pipe, state, encoder_folder, image, scale, sample, timestep, text):
    """One guided UNet call through diffusers' own IP-Adapter path: load_ip_adapter on a
    StableDiffusionPipeline sharing the UNet, its prepare_ip_adapter_image_embeds."""
    saved = dict(pipe.unet.attn_processors)
    reference = _diffusers_pipeline(pipe, encoder_folder, state)
    try:
        reference.set_ip_adapter_scale(scale)
        embeds = reference.prepare_ip_adapter_image_embeds([image], None, "cpu", 1, True)
        with torch.no_grad():
            return pipe.unet(torch.cat([sample, sample]), timestep, encoder_hidden_states=text,
                             added_cond_kwargs={"image_embeds": embeds}).sample
    finally:
        reference.unload_ip_adapter()
        pipe.unet.set_attn_processor(saved)


@pytest.mark.parametrize("model", ["ip-adapter_sd15", "ip-adapter-plus_sd15"])
def test_the_unet_output_matches_diffusers_own_ip_adapter_path(ip_engine, ip_data, model):
    pipe = ip_engine.models.require().base
    library = ip_engine.addons.controlnets
    encoder_folder = ip_data / "models" / "ControlNet" / "annotators" / "clip_vision" / "clip_h"
    image = picture("green", "oval")
    generator = torch.Generator().manual_seed(5)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(2, 7, pipe.unet.config.cross_attention_dim, generator=generator)
    timestep = torch.tensor(500)
    entry = library.entry(model)
    expected = _reference_unet_output(pipe, ip_adapter.read_state(entry.path, model), encoder_folder, image, 0.7,
                                      sample, timestep, text)
    [prepared] = ip_adapter.prepare([(0, unit(model=model, image=image, weight=0.7))], library, "cpu",
                                    pipe.unet.dtype)
    assert_attached_call_matches(pipe, prepared, sample, timestep, text, expected)


def assert_attached_call_matches(pipe, prepared, sample, timestep, text, expected) -> None:
    """One guided UNet call with the prepared adapter attached equals `expected`, and differs from
    the plain call."""
    with ip_adapter.attached(pipe.unet, [prepared], cfg=True, progress=lambda: (0, 1)), torch.no_grad():
        ours = pipe.unet(torch.cat([sample, sample]), timestep, encoder_hidden_states=text).sample
    with torch.no_grad():
        plain = pipe.unet(torch.cat([sample, sample]), timestep, encoder_hidden_states=text).sample
    assert (ours - plain).abs().max() > 1e-3
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_the_window_sets_the_steps_the_adapter_attends(ip_engine, monkeypatch):
    """Per UNet call (one per Euler step, guided in one batch): whether the adapter's key
    projection ran, i.e. its scale was not 0."""
    unet = ip_engine.models.require().base.unet
    calls, attended = [], []
    original = ip_adapter._ip_processors

    def recording(target):
        processors = original(target)
        processors[0].to_k_ip[0].register_forward_hook(lambda *_: attended.append(len(calls)))
        return processors

    monkeypatch.setattr(ip_adapter, "_ip_processors", recording)
    handle = unet.register_forward_hook(lambda *_: calls.append(len(calls)))
    try:
        ip_engine.generate(BASE.replace(steps=8, controlnet_units=(unit(guidance_start=0.25, guidance_end=0.75),)))
    finally:
        handle.remove()
    assert unet.encoder_hid_proj is None
    assert len(calls) == 8
    # Steps 2..5 of 8 lie in [0.25, 0.75].
    assert sorted(set(attended)) == [2, 3, 4, 5], attended


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_offload_modes_give_the_same_picture(ip_engine, mode):
    """Under the offload hooks (RAM standing in for VRAM, so they really run) the adapter's layers
    work as without them, and the UNet comes back plain."""
    model = ip_engine.models.current
    plain = pixels(ip_engine.generate(BASE))
    before = pixels(ip_engine.generate(BASE.replace(controlnet_units=(unit(),))))
    model.placement.offload_on_cpu = True
    try:
        ip_engine.settings.update({"memory_mode": mode})
        offloaded = pixels(ip_engine.generate(BASE.replace(controlnet_units=(unit(),))))
        assert model.placement.mode == mode
        assert np.abs(offloaded - before).max() <= 1
        assert np.abs(pixels(ip_engine.generate(BASE)) - plain).max() <= 1
    finally:
        ip_engine.settings.update({"memory_mode": "none"})
        model.placement.offload_on_cpu = False
    assert np.array_equal(pixels(ip_engine.generate(BASE)), plain)


class _Fixed(torch.nn.Module):
    """An image projection that returns given context tokens, whatever it is handed."""

    def __init__(self, tokens):
        super().__init__()
        self.tokens = tokens

    def forward(self, image_embeds):
        return [self.tokens]


def test_attention_slicing_stays_on_the_other_layers(ip_engine):
    """The sliced processors (which take arguments) stay where no adapter goes, and come back."""
    unet = ip_engine.models.require().base.unet
    plain = pixels(ip_engine.generate(BASE.replace(controlnet_units=(unit(),))))
    ip_engine.settings.update({"attention_slicing": True})
    try:
        sliced = pixels(ip_engine.generate(BASE.replace(controlnet_units=(unit(),))))
    finally:
        ip_engine.settings.update({"attention_slicing": False})
    assert np.abs(sliced - plain).max() <= 1
    assert all(type(p).__name__ != "IPAdapterAttnProcessor2_0" for p in unet.attn_processors.values())


def test_hires_fix_keeps_the_adapter_in_its_second_pass(ip_engine, monkeypatch):
    unet = ip_engine.models.require().base.unet
    current, sizes = [], []
    original = ip_adapter._ip_processors

    def recording(target):
        processors = original(target)
        processors[0].to_k_ip[0].register_forward_hook(lambda *_: sizes.append(current[-1]))
        return processors

    monkeypatch.setattr(ip_adapter, "_ip_processors", recording)
    handle = unet.register_forward_pre_hook(lambda module, args, kwargs: current.append(tuple(args[0].shape[-2:])),
                                            with_kwargs=True)
    try:
        result = ip_engine.generate(BASE.replace(controlnet_units=(unit(),), extensions={
            "hires_fix": {"enabled": True, "scale": 2.0, "upscaler": "Lanczos", "steps": 2,
                          "denoising_strength": 0.5}}))
    finally:
        handle.remove()
    assert result.images[0].size == (128, 128)
    assert (8, 8) in sizes and (16, 16) in sizes  # the first pass and the hires pass, both prompted


def test_several_pictures_are_averaged_after_their_projection(ip_engine, ip_data):
    """As the extension averages them: each picture's context tokens (diffusers' own projection of
    diffusers' own features), then their mean, for the positive and the negative half."""
    pipe = ip_engine.models.require().base
    library = ip_engine.addons.controlnets
    red, blue = picture("red"), picture("blue", "oval")
    generator = torch.Generator().manual_seed(9)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(2, 7, pipe.unet.config.cross_attention_dim, generator=generator)
    model = "ip-adapter-plus_sd15"
    [prepared] = ip_adapter.prepare([(0, unit(model=model, image=red, more_images=(blue,), weight=0.8))],
                                    library, "cpu", torch.float32)
    with ip_adapter.attached(pipe.unet, [prepared], cfg=True, progress=lambda: (0, 1)), torch.no_grad():
        ours = pipe.unet(torch.cat([sample, sample]), 400, encoder_hidden_states=text).sample

    saved = dict(pipe.unet.attn_processors)
    reference = _diffusers_pipeline(pipe, ip_data / "models" / "ControlNet" / "annotators" / "clip_vision" / "clip_h",
                                    ip_adapter.read_state(library.entry(model).path, model))
    try:
        reference.set_ip_adapter_scale(0.8)
        with torch.no_grad():
            tokens = [pipe.unet.encoder_hid_proj(reference.prepare_ip_adapter_image_embeds([image], None, "cpu", 1,
                                                                                          True))[0]
                      for image in (red, blue)]
            projection = pipe.unet.encoder_hid_proj
            pipe.unet.encoder_hid_proj = _Fixed((tokens[0] + tokens[1]) / 2)
            expected = pipe.unet(torch.cat([sample, sample]), 400, encoder_hidden_states=text,
                                 added_cond_kwargs={"image_embeds": []}).sample
            pipe.unet.encoder_hid_proj = projection
    finally:
        reference.unload_ip_adapter()
        pipe.unet.set_attn_processor(saved)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    alone = ip_engine.generate(BASE.replace(controlnet_units=(unit(image=red),)))
    both = ip_engine.generate(BASE.replace(controlnet_units=(unit(image=red, more_images=(blue,)),)))
    assert alone.images[0].tobytes() != both.images[0].tobytes()


def test_two_adapters_and_a_controlnet_together(ip_engine):
    plus = unit(module="ip-adapter-auto", model="ip-adapter-plus_sd15", image=picture("blue", "oval"))
    control = ControlUnit(enabled=True, module="none", model="tiny-cn", image=picture("black"))
    alone = ip_engine.generate(BASE.replace(controlnet_units=(unit(),)))
    together = ip_engine.generate(BASE.replace(controlnet_units=(unit(), plus, control)))
    assert together.images[0].tobytes() != alone.images[0].tobytes()
    text = together.infotexts[0]
    assert "Model: ip-adapter-plus_sd15" in text and "Model: tiny-cn" in text
    assert ip_engine.models.require().base.unet.encoder_hid_proj is None


def test_a_single_file_encoder_gives_the_folder_s_features(ip_data, ip_engine, tmp_path):
    folder = ip_data / "models" / "ControlNet" / "annotators" / "clip_vision" / "clip_h"
    file = write_encoder_file(tmp_path / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    assert ip_adapter.find_encoder(tmp_path / "ControlNet", "clip_h") == file
    from_folder = ip_adapter.image_features(*ip_adapter.load_encoder(folder), [picture()], False)
    from_file = ip_adapter.image_features(*ip_adapter.load_encoder(file), [picture()], False)
    torch.testing.assert_close(from_file[0], from_folder[0])


def test_a_released_bin_file_is_read_with_allow_unsafe_only(engine, tmp_path):
    """ip-adapter_sd15.bin as released: torch.save of {"image_proj": {...}, "ip_adapter": {...}}, in
    ComfyUI's models/ipadapter; pickles are opened only with --allow-unsafe-checkpoints."""
    from engine.controlnet.models import ControlNetLibrary
    from engine.errors import CheckpointError
    from tests.support.ip_adapter_files import ip_adapter_tensors

    flat = ip_adapter_tensors(engine.models.require().base.unet, "plain", seed=4)
    nested = {group: {k[len(group) + 1:]: v for k, v in flat.items() if k.startswith(group + ".")}
              for group in ("image_proj", "ip_adapter")}
    (tmp_path / "models" / "ipadapter").mkdir(parents=True)
    torch.save(nested, tmp_path / "models" / "ipadapter" / "ip-adapter_sd15.bin")
    device = engine.addons.controlnets.device_config
    safe = ControlNetLibrary(tmp_path / "models" / "ControlNet", device)
    assert safe.names() == ["ip-adapter_sd15"] and not safe.is_ip_adapter("ip-adapter_sd15")
    with pytest.raises(CheckpointError, match="allow-unsafe-checkpoints"):
        safe.family("ip-adapter_sd15")
    trusting = ControlNetLibrary(tmp_path / "models" / "ControlNet", device, allow_unsafe=True)
    assert trusting.is_ip_adapter("ip-adapter_sd15") and trusting.family("ip-adapter_sd15") == "sd1"
    state = ip_adapter.read_state(trusting.entry("ip-adapter_sd15").path, "ip-adapter_sd15", allow_unsafe=True)
    assert all(torch.equal(state[group][key], value) for group in nested for key, value in nested[group].items())
    with pytest.raises(CheckpointError, match="pickled"):
        ip_adapter.read_state(trusting.entry("ip-adapter_sd15").path, "ip-adapter_sd15")


def _refused(ip_engine, *units, **fields) -> str:
    with pytest.raises(UserError) as error:
        ip_engine.generate(BASE.replace(controlnet_units=units, **fields))
    return error.value.message


def test_refusals_name_the_problem(ip_engine, ip_data):
    assert "clip_g" in _refused(ip_engine, unit(module="ip-adapter_clip_sdxl"))
    assert "clip_vision" in _refused(ip_engine, unit(module="ip-adapter_clip_sdxl"))
    message = _refused(ip_engine, unit(module="ip-adapter_face_id", model="ip-adapter-faceid_sd15"))
    assert "insightface" in message and "buffalo_l" in message
    assert "'ip-adapter-faceid_sd15' is a FaceID IP-Adapter: use the ip-adapter_face_id preprocessor" in \
        _refused(ip_engine, unit(module="ip-adapter-auto", model="ip-adapter-faceid_sd15"))
    assert "'ip-adapter_sdxl' is a SDXL IP-Adapter, but the loaded checkpoint is SD" in \
        _refused(ip_engine, unit(model="ip-adapter_sdxl"))
    assert "ip-adapter_" in _refused(ip_engine, unit(module="canny"))
    assert "IP-Adapter models" in _refused(ip_engine, unit(model="tiny-cn"))
    several = ControlUnit(enabled=True, module="canny", model="tiny-cn", image=picture(), more_images=(picture(),))
    assert "several control images are for IP-Adapter units" in _refused(ip_engine, several)


def test_an_adapter_made_for_another_unet_is_refused_by_name(engine, tiny_models, ip_data, tmp_path):
    """Tiny UNets all read as SD 1.x by their context width, so the layers themselves must differ."""
    shutil.copytree(ip_data / "models" / "ControlNet" / "annotators", tmp_path / "models" / "ControlNet" / "annotators")
    write_ip_adapter(tiny_models.reference_pipeline("sdxl").unet,
                     tmp_path / "models" / "ControlNet" / "ip-adapter_other.safetensors")
    other = engine_over(engine, tmp_path)
    unet = engine.models.require().base.unet
    before = dict(unet.attn_processors)
    message = _refused(other, unit(model="ip-adapter_other"))
    assert "'ip-adapter_other' does not fit the loaded checkpoint's UNet" in message
    assert all(unet.attn_processors[name] is processor for name, processor in before.items())
    assert unet.encoder_hid_proj is None


def test_an_encoder_of_another_width_is_refused_and_encoders_are_kept_between_jobs(engine, ip_data, tmp_path):
    shutil.copytree(ip_data / "models" / "ControlNet", tmp_path / "models" / "ControlNet")
    write_encoder_file(tmp_path / "models" / "clip_vision" / "clip_g.safetensors", projection_dim=40)
    other = engine_over(engine, tmp_path)
    message = _refused(other, unit(module="ip-adapter_clip_sdxl"))
    assert "reads 48-wide image features, but the image encoder clip_g.safetensors gives 40" in message
    library = other.addons.controlnets
    path = ip_adapter.find_encoder(library.folder, "clip_h")
    assert library.image_encoder(path)[0] is library.image_encoder(path)[0]
    other.generate(BASE.replace(controlnet_units=(unit(),)))
    assert library.image_encoder(path)[0].device == torch.device("cpu")


def test_a_missing_image_encoder_is_named(engine, tmp_path):
    unet = engine.models.require().base.unet
    write_ip_adapter(unet, tmp_path / "models" / "ControlNet" / "ip-adapter_sd15.safetensors")
    bare = engine_over(engine, tmp_path)
    message = _refused(bare, unit())
    assert "clip_h.safetensors" in message and str(tmp_path / "models" / "ControlNet" / "annotators" / "clip_vision") in message


def test_an_sdxl_unet_matches_diffusers_own_ip_adapter_path(tiny_models, ip_data, tmp_path):
    """SDXL's UNet takes the features beside its text_embeds/time_ids: our hook keeps those."""
    from engine.controlnet.models import ControlNetLibrary
    from engine.devices import DeviceConfig

    pipe = tiny_models.reference_pipeline("sdxl")
    unet = pipe.unet
    folder = tmp_path / "models" / "ControlNet"
    write_ip_adapter(unet, folder / "ip-adapter_sdxl_vit-h.safetensors", "plus", seed=6)
    shutil.copytree(ip_data / "models" / "ControlNet" / "annotators", folder / "annotators")
    library = ControlNetLibrary(folder, DeviceConfig("cpu", torch.float32))
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(2, 7, unet.config.cross_attention_dim, generator=generator)
    pooled_width = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled_width, generator=generator),
             "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    image = picture("purple")
    entry = library.entry("ip-adapter_sdxl_vit-h")
    [prepared] = ip_adapter.prepare([(0, unit(module="ip-adapter-auto", model=entry.name, image=image))],
                                    library, "cpu", torch.float32)
    with ip_adapter.attached(unet, [prepared], cfg=True, progress=lambda: (0, 1)), torch.no_grad():
        ours = unet(torch.cat([sample, sample]), 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
    assert unet.encoder_hid_proj is None

    reference = _diffusers_pipeline(pipe, folder / "annotators" / "clip_vision" / "clip_h",
                                    ip_adapter.read_state(entry.path, entry.name))
    embeds = reference.prepare_ip_adapter_image_embeds([image], None, "cpu", 1, True)
    with torch.no_grad():
        expected = unet(torch.cat([sample, sample]), 500, encoder_hidden_states=text,
                        added_cond_kwargs={**added, "image_embeds": embeds}).sample
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
