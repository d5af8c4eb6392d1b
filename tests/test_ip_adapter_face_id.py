"""FaceID IP-Adapter units: face embeddings from insightface (running a tiny stand-in of its
buffalo_l pack, tests/support/face_pack.py) steer the picture through diffusers' FaceID image
projections; checked against diffusers' own FaceID path, with the largest face used, the pack
looked for where the ecosystem keeps it, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.controlnet import face_id, ip_adapter, preprocessors
from engine.controlnet.units import ControlUnit
from engine.errors import RequestError, UserError
from tests.support.face_pack import write_pack
from tests.support.addon_engines import engine_over
from tests.support.ip_adapter_files import write_encoder_folder, write_ip_adapter
from tests.test_ip_adapter import BASE, _diffusers_pipeline, assert_attached_call_matches


def face_picture(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def face_data(engine, tmp_path_factory):
    data = tmp_path_factory.mktemp("faceid")
    unet = engine.models.require().base.unet
    controlnet = data / "models" / "ControlNet"
    write_ip_adapter(unet, controlnet / "ip-adapter-faceid_sd15.safetensors", "faceid", seed=3)
    write_ip_adapter(unet, controlnet / "ip-adapter-faceid-plus_sd15.safetensors", "faceid plus", seed=4)
    write_ip_adapter(unet, controlnet / "ip-adapter-faceid-plusv2_sd15.safetensors", "faceid plus", seed=4)
    write_ip_adapter(unet, controlnet / "ip-adapter_sd15.safetensors", "plain", seed=1)
    write_encoder_folder(controlnet / "annotators" / "clip_vision" / "clip_h")
    write_pack(data / "models" / "insightface" / "models" / "buffalo_l")
    return data


@pytest.fixture(scope="module")
def face_engine(engine, face_data):
    return engine_over(engine, face_data)


def unit(**fields) -> ControlUnit:
    return ControlUnit(**{"enabled": True, "module": "ip-adapter_face_id", "model": "ip-adapter-faceid_sd15",
                          "image": face_picture(), **fields})


def test_the_pack_is_found_where_the_ecosystem_keeps_it(face_data, tmp_path):
    controlnet = face_data / "models" / "ControlNet"
    assert face_id.find_pack(controlnet) == face_data / "models" / "insightface" / "models" / "buffalo_l"
    table = {name: (ok, reason) for name, ok, reason in preprocessors.availability(face_data / "models")}
    assert table["ip-adapter_face_id"] == (True, "") and table["ip-adapter_face_id_plus"] == (True, "")
    bare = tmp_path / "models" / "ControlNet"
    reason = dict((n, r) for n, _, r in preprocessors.availability(tmp_path / "models"))["ip-adapter_face_id"]
    assert "buffalo_l" in reason and str(tmp_path / "models" / "insightface" / "models" / "buffalo_l") in reason
    write_pack(bare / "annotators" / "insightface" / "models" / "buffalo_l")   # the extension's downloads folder
    assert face_id.find_pack(bare) == bare / "annotators" / "insightface" / "models" / "buffalo_l"


def test_the_largest_face_gives_the_embedding(face_engine, face_data):
    folder = face_id.find_pack(face_data / "models" / "ControlNet")
    analysis = face_engine.addons.controlnets.annotators.face_analysis(folder)
    picture = face_picture(1)
    [ours] = face_id.embeddings(analysis, [picture], "unit 0")
    bgr = np.asarray(picture)[:, :, ::-1].copy()
    faces = analysis.get(bgr)
    assert len(faces) == 2
    sizes = [(face.bbox[2] - face.bbox[0]) * (face.bbox[3] - face.bbox[1]) for face in faces]
    largest = faces[int(np.argmax(sizes))]
    assert float(largest.det_score) < max(float(face.det_score) for face in faces)   # not the surest one
    torch.testing.assert_close(ours, torch.from_numpy(np.asarray(largest.normed_embedding, dtype=np.float32)))
    assert abs(float(ours.norm()) - 1.0) < 1e-4
    [other] = face_id.embeddings(analysis, [face_picture(2)], "unit 0")
    assert not torch.allclose(ours, other)   # the embedding follows the picture


def _reference(pipe, state, encoder_folder, scale, sample, timestep, text, embeds, clip=None, shortcut=False):
    """One guided UNet call through diffusers' own IP-Adapter loading of the FaceID file, given the
    embeddings as diffusers' FaceID examples do (negative zeros first), FaceID plus's CLIP hidden
    states set on its projection layer."""
    saved = dict(pipe.unet.attn_processors)
    reference = _diffusers_pipeline(pipe, encoder_folder, state)
    try:
        reference.set_ip_adapter_scale(scale)
        layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        if clip is not None:
            layer.clip_embeds, layer.shortcut = clip, shortcut
        with torch.no_grad():
            return pipe.unet(torch.cat([sample, sample]), timestep, encoder_hidden_states=text,
                             added_cond_kwargs={"image_embeds": [embeds]}).sample
    finally:
        reference.unload_ip_adapter()
        pipe.unet.set_attn_processor(saved)


@pytest.mark.parametrize("model, module", [("ip-adapter-faceid_sd15", "ip-adapter_face_id"),
                                           ("ip-adapter-faceid-plus_sd15", "ip-adapter_face_id_plus"),
                                           ("ip-adapter-faceid-plusv2_sd15", "ip-adapter_face_id_plus")])
def test_the_unet_output_matches_diffusers_own_faceid_path(face_engine, face_data, model, module):
    pipe = face_engine.models.require().base
    library = face_engine.addons.controlnets
    picture = face_picture(3)
    generator = torch.Generator().manual_seed(5)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(2, 7, pipe.unet.config.cross_attention_dim, generator=generator)
    timestep = torch.tensor(500)
    [prepared] = ip_adapter.prepare([(0, unit(model=model, module=module, image=picture, weight=0.8))], library,
                                    "cpu", pipe.unet.dtype)
    analysis = library.annotators.face_analysis(face_id.find_pack(library.folder))
    face = face_id.embeddings(analysis, [picture], "unit 0")
    embeds = torch.stack([torch.zeros_like(face), face])            # (2, 1, 512): negative, positive
    clip = None
    encoder_folder = library.folder / "annotators" / "clip_vision" / "clip_h"
    if "plus" in model:
        encoder, processor = library.image_encoder(encoder_folder)
        cond, uncond = ip_adapter.image_features(encoder, processor, [picture], hidden_states=True)
        clip = torch.stack([uncond, cond])                           # (2, 1, 257, width)
        assert prepared.shortcut == ("v2" in model)
    entry = library.entry(model)
    expected = _reference(pipe, ip_adapter.read_state(entry.path, model), encoder_folder, 0.8, sample, timestep,
                          text, embeds, clip, shortcut="v2" in model)
    assert_attached_call_matches(pipe, prepared, sample, timestep, text, expected)


def test_a_faceid_unit_steers_the_picture_and_weight_zero_is_none(face_engine):
    plain = face_engine.generate(BASE)
    steered = face_engine.generate(BASE.replace(controlnet_units=(unit(),)))
    other = face_engine.generate(BASE.replace(controlnet_units=(unit(image=face_picture(9)),)))
    plus = face_engine.generate(BASE.replace(controlnet_units=(
        unit(model="ip-adapter-faceid-plus_sd15", module="ip-adapter_face_id_plus"),)))
    plus_v2 = face_engine.generate(BASE.replace(controlnet_units=(   # the same weights: only the shortcut differs
        unit(model="ip-adapter-faceid-plusv2_sd15", module="ip-adapter_face_id_plus"),)))
    pixels = [np.asarray(result.images[0], dtype=np.int16) for result in (plain, steered, other, plus, plus_v2)]
    assert np.abs(pixels[4] - pixels[3]).mean() > 0.05
    assert np.abs(pixels[1] - pixels[0]).mean() > 0.5
    assert np.abs(pixels[1] - pixels[2]).mean() > 0.05   # another face, another picture
    assert np.abs(pixels[3] - pixels[0]).mean() > 0.5
    weightless = face_engine.generate(BASE.replace(controlnet_units=(unit(weight=0.0),)))
    assert weightless.images[0].tobytes() == plain.images[0].tobytes()
    assert "Module: ip-adapter_face_id, Model: ip-adapter-faceid_sd15" in steered.infotexts[0]
    assert face_engine.generate(BASE).images[0].tobytes() == plain.images[0].tobytes()


def _refused(face_engine, *units) -> str:
    with pytest.raises(UserError) as error:
        face_engine.generate(BASE.replace(controlnet_units=units))
    return error.value.message


def test_refusals_name_the_problem(face_engine, face_data, tmp_path):
    assert "'ip-adapter-faceid_sd15' is a FaceID IP-Adapter: use the ip-adapter_face_id preprocessor" in \
        _refused(face_engine, unit(module="ip-adapter_clip_sd15"))
    assert "preprocessor 'ip-adapter_face_id' is for FaceID IP-Adapter models" in \
        _refused(face_engine, unit(model="ip-adapter_sd15"))
    assert "is a FaceID plus IP-Adapter: use the ip-adapter_face_id_plus preprocessor" in \
        _refused(face_engine, unit(model="ip-adapter-faceid-plus_sd15"))
    # A picture without a face: a pack whose detector finds none.
    blind = tmp_path / "blind"
    write_ip_adapter(face_engine.models.require().base.unet,
                     blind / "models" / "ControlNet" / "ip-adapter-faceid_sd15.safetensors", "faceid", seed=3)
    write_pack(blind / "models" / "insightface" / "models" / "buffalo_l", faces=())
    engine = engine_over(face_engine, blind)
    with pytest.raises(RequestError, match="ControlNet unit 0: no face was found in reference picture 1"):
        engine.generate(BASE.replace(controlnet_units=(unit(),)))
