"""The Checkpoint Merger (engine/merge/): tiny checkpoints merged, then every tensor compared with
the method's formula computed here in float64; fp16, VAE baking, discarding, the recipe metadata,
refusals with their messages; the merged file loading and making a picture; the API route."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError, NotFoundError, RequestError
from engine.files import HashCache
from engine.merge.checkpoint_merger import CheckpointMerger
from engine.merge.merge_request import MergeBusyError, MergeRequest
from engine.merge.safetensors_stream import SafetensorsReader, SafetensorsWriter
from engine.models.registry import ModelRegistry
from engine.networks.vae import VaeLibrary
from engine.request import GenerationRequest
from tests.conftest import TinyModels, make_engine
from tests.support.ldm_export import export_single_file, save_ldm_state_dict, vae_to_ldm

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory):
    """models/Stable-diffusion with a.safetensors (tiny-sd1), b and c (other seeds), xl (tiny-sdxl),
    a9 (an inpainting A); models/VAE with one VAE in LDM layout and the same in diffusers' layout."""
    root = tmp_path_factory.mktemp("merge")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copyfile(tiny_models.checkpoint("sd1"), ckpts / "a.safetensors")
    for name, seed in (("b", 1), ("c", 2)):
        export_single_file(tiny_models.reference_pipeline("sd1", seed=seed), ckpts / f"{name}.safetensors", "sd1")
    shutil.copyfile(tiny_models.checkpoint("sdxl"), ckpts / "xl.safetensors")
    inpainting = load_file(str(ckpts / "a.safetensors"))
    weight = inpainting[UNET_IN]
    inpainting[UNET_IN] = torch.cat([weight, torch.randn(weight.shape[0], 5, *weight.shape[2:],
                                                         generator=torch.Generator().manual_seed(9))], dim=1)
    save_ldm_state_dict(inpainting, ckpts / "a9.safetensors")
    (ckpts / "a.yaml").write_text("model:\n  params: {}\n")
    vaes = root / "models" / "VAE"
    vaes.mkdir(parents=True)
    vae = tiny_models.reference_pipeline("sd1", seed=3).vae
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae).items()}, str(vaes / "ldm-vae.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(vaes / "diffusers-vae.safetensors"))
    return root


def merger_for(root: Path, allow_unsafe: bool = False) -> CheckpointMerger:
    hashes = HashCache(root / "cache.json")
    registry = ModelRegistry([root / "models" / "Stable-diffusion"], hashes)
    return CheckpointMerger(registry, VaeLibrary(root / "models" / "VAE", hashes), allow_unsafe)


@pytest.fixture
def merger(files):
    made = merger_for(files)
    before = set((files / "models" / "Stable-diffusion").iterdir())
    yield made
    for path in set((files / "models" / "Stable-diffusion").iterdir()) - before:
        path.unlink()


def tensors(root: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / "models" / "Stable-diffusion" / name))


def metadata_of(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_weighted_sum_is_the_formula_tensor_by_tensor(files, merger):
    steps = []
    result = merger.merge(MergeRequest("a", "b", interp_method="Weighted sum", multiplier=0.3),
                          progress=lambda done, total: steps.append((done, total)))
    a, b = tensors(files, "a.safetensors"), tensors(files, "b.safetensors")
    merged = load_file(str(result.path))
    assert result.path.name == "0.7(a) + 0.3(b).safetensors"
    assert set(merged) == set(a)
    for key, value in a.items():
        if not value.is_floating_point() or key == POSITION_IDS:
            assert torch.equal(merged[key], value), key
            continue
        expected = (value.double() * (1 - 0.3) + b[key].double() * 0.3).to(value.dtype)
        assert merged[key].dtype == value.dtype and torch.equal(merged[key], expected), key
    assert steps[-1] == (len(a), len(a)) and len(steps) == len(a)
    # Listed at once, with its hash.
    assert result.checkpoint.title in merger.registry.titles()
    assert result.checkpoint.short_hash and result.checkpoint.title.endswith(f"[{result.checkpoint.short_hash}]")


def test_the_recipe_is_in_the_metadata_as_a1111_writes_it(files, merger):
    result = merger.merge(MergeRequest("a", "b", multiplier=0.5, custom_name="recipe", discard_weights="^model_ema"))
    metadata = metadata_of(result.path)
    assert metadata["format"] == "pt"
    recipe = json.loads(metadata["sd_merge_recipe"])
    a, b = (merger.registry.with_hash(merger.registry.find(n)) for n in ("a", "b"))
    assert recipe == {"type": "webui", "primary_model_hash": a.sha256, "secondary_model_hash": b.sha256,
                      "tertiary_model_hash": None, "interp_method": "Weighted sum", "multiplier": 0.5,
                      "save_as_half": False, "custom_name": "recipe", "config_source": 0, "bake_in_vae": "None",
                      "discard_weights": "^model_ema", "is_inpainting": False, "is_instruct_pix2pix": False}
    models = json.loads(metadata["sd_merge_models"])
    assert set(models) == {a.sha256, b.sha256}
    assert models[a.sha256]["name"] == "a.safetensors" and models[a.sha256]["sd_merge_recipe"] is None
    assert len(models[a.sha256]["legacy_hash"]) == 8
    # A merge of the merge carries the earlier recipe along.
    again = merger.merge(MergeRequest("recipe", "b", multiplier=0.5, custom_name="recipe2"))
    nested = json.loads(metadata_of(again.path)["sd_merge_models"])
    first = merger.registry.with_hash(merger.registry.find("recipe"))
    assert nested[first.sha256]["sd_merge_recipe"] == recipe
    assert a.sha256 in nested


def test_add_difference_in_float16(files, merger):
    result = merger.merge(MergeRequest("a", "b", "c", interp_method="Add difference", multiplier=0.7,
                                       save_as_half=True))
    a, b, c = (tensors(files, f"{n}.safetensors") for n in "abc")
    merged = load_file(str(result.path))
    assert result.path.name == "a + 0.7(b - c).safetensors"
    for key, value in a.items():
        if not value.is_floating_point() or key == POSITION_IDS:
            assert torch.equal(merged[key], value), key
            continue
        expected = (value.double() + (b[key].double() - c[key].double()) * 0.7).to(torch.float16)
        assert merged[key].dtype == torch.float16 and torch.equal(merged[key], expected), key


def test_no_interpolation_bakes_a_vae_discards_weights_and_copies_the_config(files, merger):
    result = merger.merge(MergeRequest("a", interp_method="No interpolation", bake_in_vae="ldm-vae.safetensors",
                                       discard_weights=r"^cond_stage_model\..*\.layers\.1\.", custom_name="baked"))
    a = tensors(files, "a.safetensors")
    vae = load_file(str(files / "models" / "VAE" / "ldm-vae.safetensors"))
    merged = load_file(str(result.path))
    discarded = {k for k in a if k.startswith("cond_stage_model.") and ".layers.1." in k}
    assert discarded and set(merged) == set(a) - discarded
    vae_keys = {k for k in merged if k.startswith("first_stage_model.")}
    assert vae_keys == {"first_stage_model." + k for k in vae}
    for key in merged:
        expected = vae[key.removeprefix("first_stage_model.")] if key in vae_keys else a[key]
        assert torch.equal(merged[key], expected), key
    assert result.baked == len(vae) and f"{len(discarded)} weights matching" in result.info
    assert json.loads(metadata_of(result.path)["sd_merge_recipe"])["bake_in_vae"] == "ldm-vae.safetensors"
    assert (result.path.with_suffix(".yaml")).read_text() == (files / "models" / "Stable-diffusion" / "a.yaml").read_text()


def test_a_vae_in_diffusers_layout_is_baked_under_ldm_names(files, merger):
    result = merger.merge(MergeRequest("b", interp_method="No interpolation", save_as_half=True,
                                       bake_in_vae="diffusers-vae", config_source="Don't", custom_name="baked2"))
    expected = load_file(str(files / "models" / "VAE" / "ldm-vae.safetensors"))
    merged = load_file(str(result.path))
    for key, value in expected.items():
        assert torch.equal(merged["first_stage_model." + key], value.half()), key
    assert not result.path.with_suffix(".yaml").exists()


def test_weights_missing_from_b_are_kept_from_a_and_said(files, merger):
    b = tensors(files, "b.safetensors")
    gone = sorted(k for k in b if k.startswith("model.diffusion_model.out."))
    save_file({k: v for k, v in b.items() if k not in gone}, str(files / "models" / "Stable-diffusion" / "b-cut.safetensors"))
    merger.registry.refresh()
    result = merger.merge(MergeRequest("a", "b-cut", multiplier=1.0, custom_name="cut"))
    a, merged = tensors(files, "a.safetensors"), load_file(str(result.path))
    for key in gone:
        assert torch.equal(merged[key], a[key])
    assert f"{len(gone)} weights of A are not in B and were kept from A" in result.info
    probe = "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"
    assert torch.equal(merged[probe], b[probe])   # M = 1: B's own


def test_sdxl_checkpoints_merge_by_the_formula(files, merger, tiny_models):
    folder = files / "models" / "Stable-diffusion"
    export_single_file(tiny_models.reference_pipeline("sdxl", seed=1), folder / "xl-b.safetensors", "sdxl")
    merger.registry.refresh()
    result = merger.merge(MergeRequest("xl", "xl-b", multiplier=0.6, save_as_half=True))
    a, b = tensors(files, "xl.safetensors"), tensors(files, "xl-b.safetensors")
    merged = load_file(str(result.path))
    assert set(merged) == set(a) and any(k.startswith("conditioner.embedders.1.") for k in merged)
    for key, value in a.items():
        if not value.is_floating_point():
            assert torch.equal(merged[key], value), key
            continue
        stored = torch.float16 if value.dtype == torch.float32 else value.dtype
        expected = (value.double() * (1 - 0.6) + b[key].double() * 0.6).to(stored)
        assert torch.equal(merged[key], expected), key


def test_an_inpainting_a_merges_its_first_four_input_channels(files, merger):
    result = merger.merge(MergeRequest("a9", "b", "c", interp_method="Add difference", multiplier=1.0))
    assert result.path.name == "a9 + 1.0(b - c).inpainting.safetensors" and result.is_inpainting
    a9, b, c = (tensors(files, f"{n}.safetensors") for n in ("a9", "b", "c"))
    merged = load_file(str(result.path))[UNET_IN]
    expected = (a9[UNET_IN][:, :4].double() + (b[UNET_IN].double() - c[UNET_IN].double())).to(merged.dtype)
    assert torch.equal(merged[:, :4], expected) and torch.equal(merged[:, 4:], a9[UNET_IN][:, 4:])
    with pytest.raises(CheckpointError, match="A must be the inpainting model"):
        merger.merge(MergeRequest("b", "a9"))


def test_models_of_different_families_are_refused_by_name(merger):
    with pytest.raises(CheckpointError) as refused:
        merger.merge(MergeRequest("a", "xl"))
    assert "'a.safetensors' is SD 1.x" in refused.value.message and "'xl.safetensors' is SDXL" in refused.value.message
    assert refused.value.field == "secondary_model_name"


def test_flux_transformers_merge_across_key_layouts_and_are_not_mixed_with_sd(files, merger):
    folder = files / "models" / "Stable-diffusion"
    generator = torch.Generator().manual_seed(4)
    shapes = {"double_blocks.0.img_attn.qkv.weight": (12, 4), "guidance_in.in_layer.weight": (4, 8),
              "img_in.weight": (4, 64), "final_layer.linear.bias": (4,)}
    bare = {k: torch.randn(s, generator=generator, dtype=torch.bfloat16) for k, s in shapes.items()}
    other = {k: torch.randn(s, generator=generator, dtype=torch.bfloat16) for k, s in shapes.items()}
    del other["guidance_in.in_layer.weight"]   # a schnell transformer: no guidance input
    save_file(bare, str(folder / "flux-a.safetensors"))
    save_file({"model.diffusion_model." + k: v for k, v in other.items()}, str(folder / "flux-b.safetensors"))
    merger.registry.refresh()
    result = merger.merge(MergeRequest("flux-a", "flux-b", multiplier=0.25, custom_name="flux-merged"))
    merged = load_file(str(result.path))
    assert set(merged) == set(bare)
    for key, value in bare.items():
        expected = value if key not in other else (value.double() * 0.75 + other[key].double() * 0.25).to(torch.bfloat16)
        assert torch.equal(merged[key], expected), key
    assert "1 weights of A are not in B" in result.info
    with pytest.raises(CheckpointError, match="'flux-a.safetensors' is FLUX.1-dev.*'a.safetensors' is SD 1.x"):
        merger.merge(MergeRequest("flux-a", "a"))


@pytest.mark.parametrize("changes, field, words", [
    ({"interp_method": "Average"}, "interp_method", "must be one of"),
    ({"multiplier": 1.5}, "multiplier", "from 0 to 1"),
    ({"multiplier": float("nan")}, "multiplier", "from 0 to 1"),
    ({"secondary_model_name": ""}, "secondary_model_name", "needs a secondary model"),
    ({"interp_method": "Add difference"}, "tertiary_model_name", "needs a tertiary model"),
    ({"discard_weights": "(unclosed"}, "discard_weights", "not a valid regular expression"),
    ({"custom_name": "../escape"}, "custom_name", "plain file name"),
    ({"custom_name": "sub/name"}, "custom_name", "plain file name"),
    ({"custom_name": "a"}, "custom_name", "one of the models being merged"),
    ({"custom_name": "b"}, "custom_name", "one of the models being merged"),
    ({"custom_name": "xl"}, "custom_name", "already exists"),
    ({"config_source": "D"}, "config_source", "must be one of"),
    ({"secondary_model_name": "nope"}, "secondary_model_name", "Checkpoint not found"),
    ({"bake_in_vae": "nope.safetensors"}, "bake_in_vae", "VAE not found"),
])
def test_bad_requests_name_the_field(merger, changes, field, words):
    request = MergeRequest(**{"primary_model_name": "a", "secondary_model_name": "b", **changes})
    with pytest.raises((RequestError, NotFoundError, CheckpointError)) as refused:
        merger.merge(request)
    assert refused.value.field == field and words in refused.value.message


def test_overwrite_replaces_only_when_asked(files, merger):
    first = merger.merge(MergeRequest("a", "b", multiplier=0.0, custom_name="same"))
    with pytest.raises(RequestError, match="already exists"):
        merger.merge(MergeRequest("a", "b", multiplier=1.0, custom_name="same"))
    merger.merge(MergeRequest("a", "b", multiplier=1.0, custom_name="same", overwrite=True))
    b = tensors(files, "b.safetensors")
    assert torch.equal(load_file(str(first.path))[UNET_IN], b[UNET_IN])
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_one_merge_at_a_time(merger):
    with merger._lock, pytest.raises(MergeBusyError) as busy:
        merger.merge(MergeRequest("a", "b"))
    assert busy.value.status == 409


def test_a_pickled_model_is_read_only_when_allowed(files, merger):
    folder = files / "models" / "Stable-diffusion"
    torch.save({"state_dict": tensors(files, "b.safetensors")}, folder / "b-pickle.ckpt")
    merger.registry.refresh()
    with pytest.raises(CheckpointError, match="pickled checkpoint"):
        merger.merge(MergeRequest("a", "b-pickle", custom_name="from-pickle"))
    allowed = merger_for(files, allow_unsafe=True)
    result = allowed.merge(MergeRequest("a", "b-pickle", multiplier=1.0, custom_name="from-pickle"))
    b = tensors(files, "b.safetensors")
    assert torch.equal(load_file(str(result.path))[UNET_IN], b[UNET_IN])
    assert result.path.suffix == ".safetensors"


def test_the_streaming_writer_round_trips_every_type_bit_exactly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    values = {"f32": torch.randn(3, 5, generator=generator), "bf16": torch.randn(7, generator=generator).bfloat16(),
              "f16": torch.randn(2, 2, 2, generator=generator).half(), "i64": torch.arange(6).reshape(2, 3),
              "bool": torch.tensor([True, False, True]), "empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5)}
    path = tmp_path / "streamed.safetensors"
    with open(path, "wb") as handle:
        writer = SafetensorsWriter(handle, {k: (v.dtype, tuple(v.shape)) for k, v in values.items()}, {"note": "x"})
        for key, value in values.items():
            flat = value.reshape(-1)
            for start in range(0, flat.numel(), 2):   # in pieces of two elements
                writer.write(key, flat[start:start + 2])
        writer.finish()
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"note": "x"}
        for key, value in values.items():
            loaded = handle.get_tensor(key)
            assert loaded.dtype == value.dtype and torch.equal(loaded, value), key
    with SafetensorsReader(path) as reader:
        assert torch.equal(reader.read_flat("f32", 4, 3), values["f32"].reshape(-1)[4:7])
        assert torch.equal(reader.read("bf16"), values["bf16"])


def test_a_cut_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"x": torch.ones(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="'cut.safetensors' is not a valid .safetensors file"):
        SafetensorsReader(path)


def test_the_merged_file_loads_and_makes_a_picture(files, merger, tiny_models, tmp_path):
    result = merger.merge(MergeRequest("a", "b", multiplier=0.5, save_as_half=True, custom_name="loadable"))
    models = TinyModels(tiny_models.root, tiny_models.config_root, files / "models" / "Stable-diffusion",
                        tiny_models.tokenizer_dir, tiny_models.tokenizer_2_dir)
    engine = make_engine(models, tmp_path, checkpoint=None)
    try:
        engine.load_checkpoint(result.checkpoint.title).outcome()
        request = GenerationRequest(prompt="a cat", steps=2, width=64, height=64, sampler_name="Euler",
                                    save_images=False, save_grid=False, seed=1)
        images = engine.generate(request).images
        assert [image.size for image in images] == [(64, 64)]
        assert engine.models.current.info.path == str(result.path)
    finally:
        engine.shutdown()


def test_the_api_route_merges_refuses_bad_input_and_needs_a_login(files, tiny_models, tmp_path):
    from ui.api.routes import build_router
    from ui.context import UIContext
    from ui.server import api_auth_dependency, install_error_handlers

    models = TinyModels(tiny_models.root, tiny_models.config_root, files / "models" / "Stable-diffusion",
                        tiny_models.tokenizer_dir, tiny_models.tokenizer_2_dir)
    (tmp_path / "models").mkdir()
    shutil.copytree(files / "models" / "VAE", tmp_path / "models" / "VAE")
    engine = make_engine(models, tmp_path, checkpoint=None)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(UIContext(engine, engine.models.registry, engine.settings, argparse.Namespace()),
                                    api_auth_dependency([("user", "pass")])))
    client = TestClient(app)
    url = "/sdapi/v1/merge-checkpoints"
    body = {"primary_model_name": "a", "secondary_model_name": "b", "multiplier": 0.4, "custom_name": "via-api",
            "bake_in_vae": "ldm-vae.safetensors", "config_source": 3}
    try:
        assert client.post(url, json=body).status_code == 401
        client.auth = ("user", "pass")
        response = client.post(url, json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        path = Path(answer["filename"])
        assert path.name == "via-api.safetensors" and path.parent == files / "models" / "Stable-diffusion"
        assert answer["title"] == f"via-api.safetensors [{answer['hash']}]" and "Checkpoint saved" in answer["info"]
        listed = client.get("/sdapi/v1/sd-models").json()
        assert answer["title"] in [item["title"] for item in listed]
        a, b = tensors(files, "a.safetensors"), tensors(files, "b.safetensors")
        key = "model.diffusion_model.out.2.weight"
        assert torch.equal(load_file(str(path))[key], (a[key].double() * 0.6 + b[key].double() * 0.4).to(a[key].dtype))
        for changes, field in (({"interp_method": "Average"}, "interp_method"), ({"multiplier": 3}, "multiplier"),
                               ({"custom_name": "../x"}, "custom_name"), ({"custom_name": "via-api"}, "custom_name"),
                               ({"secondary_model_name": "xl"}, "secondary_model_name"),
                               ({"discard_weights": "["}, "discard_weights"),
                               ({"primary_model_name": "nope"}, "primary_model_name")):
            refused = client.post(url, json={**body, **changes})
            assert 400 <= refused.status_code < 500, (changes, refused.text)
            assert field in json.dumps(refused.json()), (changes, refused.text)
        assert client.post(url, json={"secondary_model_name": "b"}).status_code == 422
    finally:
        path = files / "models" / "Stable-diffusion" / "via-api.safetensors"
        path.unlink(missing_ok=True)
        engine.shutdown()


def test_the_tab_merges_and_offers_the_result_in_the_checkpoint_list(files, tmp_path):
    import app
    from engine.settings.flags import parse
    from ui.layout import build_app
    from ui.merger_tab import run_merge

    data = tmp_path / "data"
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copyfile(files / "models" / "Stable-diffusion" / f"{name}.safetensors",
                        data / "models" / "Stable-diffusion" / f"{name}.safetensors")
    ctx = app.build(parse(["--demo", "--data-dir", str(data), "--skip-load-model-at-start"], environ={}))
    try:
        config = build_app(ctx).get_config_file()
        by_id = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
        ids = [elem_id for elem_id in by_id.values() if elem_id]
        for wanted in ("modelmerger_primary_model_name", "modelmerger_secondary_model_name",
                       "modelmerger_tertiary_model_name", "modelmerger_custom_name", "modelmerger_interp_amount",
                       "modelmerger_interp_method", "modelmerger_save_as_half", "modelmerger_config_method",
                       "modelmerger_bake_in_vae", "modelmerger_discard_weights", "modelmerger_merge",
                       "modelmerger_result"):
            assert wanted in ids, wanted
        assert ids.index("tab_pnginfo") < ids.index("tab_modelmerger") < ids.index("tab_history")
        merge = next(d for d in config["dependencies"]
                     if any(by_id.get(t) == "modelmerger_merge" and e == "click" for t, e in d["targets"]))
        assert "sd_checkpoint" in {by_id.get(o) for o in merge["outputs"]}

        seen = []
        text, titles = run_merge(ctx, "a", "b", None, "Weighted sum", 0.5, False, "from-tab", "Don't", "None", "",
                                 False, progress=lambda fraction, desc: seen.append(fraction))
        assert "Checkpoint saved to" in text and "from-tab.safetensors" in text
        assert any(title.startswith("from-tab.safetensors [") for title in titles) and seen[-1] == 1.0
        text, _ = run_merge(ctx, "a", "b", None, "Weighted sum", 0.5, False, "<b>", "Don't", "None", "", False)
        assert text.startswith("<p class='merge-error'>Error: custom_name must be a plain file name")
    finally:
        ctx.engine.shutdown()


def test_the_merge_benchmark_records_memory_against_the_model_size(tmp_path):
    from bench.merge import main

    record = main(["--gib", "0.02", "--method", "Add difference", "--workdir", str(tmp_path / "work"),
                   "--out", str(tmp_path / "results")])
    assert record["result_checked"] and record["models"] == 3
    assert record["model_gib"] == pytest.approx(0.02, rel=0.01)
    assert record["peak_rss_gib"] >= record["rss_before_merge_gib"] > 0
    saved = json.loads(next((tmp_path / "results").glob("merge-f16-0.02gib-*.json")).read_text())
    assert saved["merge_rss_per_model"] == record["merge_rss_per_model"]


def test_a_discard_pattern_that_backtracks_without_end_is_stopped(monkeypatch):
    """discard_weights runs with a time limit per weight name: a pattern that would hold the
    merge (and the server's merge lock) for ever is refused, naming the field."""
    from engine.errors import RequestError
    from engine.merge import merge_request

    pattern = merge_request.discard_pattern(r"^(a|[a-z_]|[a-z_.])*\d{5}$")
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert not merge_request.discards(pattern, key)   # quick enough at the real limit
    assert merge_request.discards(merge_request.discard_pattern("input_blocks"), key)
    monkeypatch.setattr(merge_request, "DISCARD_MATCH_SECONDS", 1e-7)
    with pytest.raises(RequestError) as error:
        merge_request.discards(pattern, key)
    assert error.value.field == "discard_weights" and "too long" in error.value.message
