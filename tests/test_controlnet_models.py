"""ControlNet models load offline from every layout users download, identical to what was saved,
or fail with a message naming the file."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from engine.controlnet.layouts import (
    CONFIG_ROOT,
    base_config,
    config_from_shapes,
    diffusers_to_ldm_keys,
    to_diffusers_names,
)
from engine.controlnet.models import ControlNetLibrary
from engine.controlnet.tiny_controlnets import build_tiny_controlnet, save_original_layout
from engine.devices import DeviceConfig
from engine.errors import CheckpointError, NotFoundError

CPU = DeviceConfig.choose(use_cpu=True)
# Published SD 1.5 ControlNet (lllyasviel/control_v11p_sd15_canny) as diffusers 0.42.1 builds it.
SD15_CONTROLNET_PARAMETERS = 361_279_120


@pytest.fixture(scope="module")
def unets(tiny_models):
    return {family: tiny_models.reference_pipeline(family).unet for family in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="module")
def controlnets(unets):
    return {family: build_tiny_controlnet(unets[family], seed=3) for family in ("sd1", "sdxl")}


def write(controlnet, folder, layout: str, name: str = "cn") -> str:
    """Save ``controlnet`` in ``layout`` under ``folder``; returns the name the library lists."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in controlnet.state_dict().items()}
    if layout == "original":
        save_original_layout(controlnet, folder / f"{name}.safetensors")
    elif layout == "original-bare":  # some releases drop the control_model. prefix
        keys = diffusers_to_ldm_keys(state)
        save_file({keys[k]: v for k, v in state.items()}, str(folder / f"{name}.safetensors"))
    elif layout == "diffusers-file":
        save_file(state, str(folder / f"{name}.safetensors"))
    elif layout == "folder":
        controlnet.save_pretrained(folder / name)
    elif layout == "folder-fp16":
        half = type(controlnet).from_config(controlnet.config)
        half.load_state_dict(state)
        half.to(torch.float16).save_pretrained(folder / name, variant="fp16")
    elif layout == "pickle":
        keys = diffusers_to_ldm_keys(state)
        torch.save({"state_dict": {"control_model." + keys[k]: v for k, v in state.items()}},
                   folder / f"{name}.pth")
    else:
        raise ValueError(layout)
    return name


def assert_same_weights(loaded, original, rounded_to=None):
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if rounded_to is not None:
            value = value.to(rounded_to).float()
        assert torch.equal(ours[key], value), key


def probe(controlnet, family, seed=0, image=None):
    """The ControlNet's residuals for a fixed input (and ``image`` as the control image)."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, controlnet.config.cross_attention_dim, generator=g)
    if image is None:
        image = torch.rand(1, 3, 64, 64, generator=g)
    extra = {}
    if family == "sdxl":
        pooled = controlnet.config.projection_class_embeddings_input_dim - 6 * controlnet.config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                      "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        down, mid = controlnet(sample, 500, context, controlnet_cond=image, return_dict=False, **extra)
    return list(down) + [mid]


LAYOUTS = [("sd1", "original"), ("sd1", "original-bare"), ("sd1", "diffusers-file"), ("sd1", "folder"),
           ("sdxl", "original"), ("sdxl", "diffusers-file"), ("sdxl", "folder")]


@pytest.mark.parametrize("family,layout", LAYOUTS)
def test_every_layout_loads_offline_to_the_same_network(family, layout, controlnets, tmp_path, no_network):
    original = controlnets[family]
    name = write(original, tmp_path, layout)
    library = ControlNetLibrary(tmp_path, CPU)
    assert library.names() == [name]
    assert library.family(name) == family
    loaded = library.load(name)
    assert loaded is not original
    assert_same_weights(loaded, original)
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    # Same architecture too, where the tensors cannot show it (norm groups, heads): same outputs
    # (up to float rounding: some CPUs pick another convolution arrangement for another layout
    # of the same weights in memory; a wrong architecture is off by whole units).
    for ours, theirs in zip(probe(loaded, family), probe(original, family)):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_fp16_diffusers_folder_and_allowed_pickle(controlnets, tmp_path, no_network):
    original = controlnets["sd1"]
    write(original, tmp_path, "folder-fp16", "half")
    write(original, tmp_path, "pickle", "pickled")
    library = ControlNetLibrary(tmp_path, CPU, allow_unsafe=True)
    assert library.names() == ["half", "pickled"]
    assert_same_weights(library.load("half"), original, rounded_to=torch.float16)
    assert library.family("pickled") == "sd1"
    assert_same_weights(library.load("pickled"), original)


def test_pickles_are_listed_but_refused_without_allow_unsafe(controlnets, tmp_path):
    write(controlnets["sd1"], tmp_path, "pickle", "control_sd15_old")
    (tmp_path / "control_sd15_old.pth").rename(tmp_path / "control_sd15_old.ckpt")
    library = ControlNetLibrary(tmp_path, CPU)
    assert library.names() == ["control_sd15_old"]
    for call in (library.load, library.family):
        with pytest.raises(CheckpointError) as caught:
            call("control_sd15_old")
        assert "control_sd15_old.ckpt" in caught.value.message
        assert "--allow-unsafe-checkpoints" in caught.value.message
    assert library.families() == {"control_sd15_old": None}


def test_cache_returns_the_same_object_and_drops_the_least_recently_used(controlnets, unets, tmp_path):
    for index in range(4):
        write(build_tiny_controlnet(unets["sd1"], seed=index), tmp_path, "original", f"cn{index}")
    library = ControlNetLibrary(tmp_path, CPU)
    first = {name: library.load(name) for name in ("cn0", "cn1", "cn2")}
    assert library.load("cn0") is first["cn0"]
    assert library.load("cn0.safetensors") is first["cn0"]  # the file name works too
    assert library.load("cn2 [0123456789]") is first["cn2"]  # and titles with a hash
    library.load("cn3")
    assert library.loaded_names() == ["cn0", "cn2", "cn3"]  # cn1 was used least recently
    assert library.load("cn2") is first["cn2"]
    again = library.load("cn1")
    assert again is not first["cn1"]
    assert_same_weights(again, first["cn1"])

    # A file replaced on disk is read again.
    path = tmp_path / "cn2.safetensors"
    save_original_layout(build_tiny_controlnet(unets["sd1"], seed=9), path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    replaced = library.load("cn2")
    assert replaced is not first["cn2"]
    assert not torch.equal(replaced.conv_in.weight, first["cn2"].conv_in.weight)


def test_scan_finds_files_and_folders_and_skips_annotators_and_hidden(controlnets, tmp_path):
    write(controlnets["sd1"], tmp_path, "original", "control_v11p_sd15_canny")
    write(controlnets["sdxl"], tmp_path / "sdxl", "folder", "controlnet-canny-sdxl-1.0")
    write(controlnets["sd1"], tmp_path / "sub", "diffusers-file", "depth")
    write(controlnets["sd1"], tmp_path / "annotators", "original", "not-a-model")
    write(controlnets["sd1"], tmp_path / ".cache", "original", "hidden-folder")
    write(controlnets["sd1"], tmp_path, "original", ".hidden")
    (tmp_path / "notes.txt").write_text("not a model")
    library = ControlNetLibrary(tmp_path, CPU)
    assert library.names() == ["control_v11p_sd15_canny", "controlnet-canny-sdxl-1.0", "depth"]
    assert library.files()["controlnet-canny-sdxl-1.0"] == tmp_path / "sdxl" / "controlnet-canny-sdxl-1.0"
    assert library.families() == {"control_v11p_sd15_canny": "sd1", "depth": "sd1",
                                  "controlnet-canny-sdxl-1.0": "sdxl"}
    # Added after the first scan: found without an explicit refresh.
    write(controlnets["sd1"], tmp_path, "original", "late")
    assert library.family("late") == "sd1"
    # One stem twice: both keep their relative paths as names.
    write(controlnets["sd1"], tmp_path / "sub", "original", "control_v11p_sd15_canny")
    assert {"control_v11p_sd15_canny.safetensors",
            "sub/control_v11p_sd15_canny.safetensors"} <= set(library.refresh())


def test_unknown_name_lists_the_available_ones(controlnets, tmp_path):
    write(controlnets["sd1"], tmp_path, "original", "canny")
    write(controlnets["sd1"], tmp_path, "original", "depth")
    library = ControlNetLibrary(tmp_path, CPU)
    with pytest.raises(NotFoundError) as caught:
        library.load("openpose")
    assert "'openpose'" in caught.value.message and "canny, depth" in caught.value.message
    empty = ControlNetLibrary(tmp_path / "missing", CPU)
    assert empty.names() == []
    with pytest.raises(NotFoundError, match="put ControlNet"):
        empty.family("canny")



def test_each_library_keeps_its_own_annotators_on_its_device(tmp_path):
    # The preprocessors' detectors live in the library (no module-wide cache or device).
    first, second = ControlNetLibrary(tmp_path, CPU), ControlNetLibrary(tmp_path, CPU)
    assert first.annotators.device == "cpu"
    assert first.annotators is not second.annotators
    gpu = DeviceConfig(torch.device("cuda", 1), torch.float16)  # only named, never used
    assert ControlNetLibrary(tmp_path / "missing", gpu).annotators.device == "cuda:1"

def test_files_that_are_not_controlnets_are_named_in_the_error(tmp_path):
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)}
    save_file(lora, str(tmp_path / "my-lora.safetensors"))
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "random.safetensors"))
    library = ControlNetLibrary(tmp_path, CPU)
    for name, reason in (("my-lora", "LoRA"), ("random", "hint-encoder")):
        for call in (library.family, library.load):
            with pytest.raises(CheckpointError) as caught:
                call(name)
            assert f"'{name}.safetensors' is not a ControlNet" in caught.value.message
            assert reason in caught.value.message


def test_a_truncated_file_is_reported_as_corrupt(controlnets, tmp_path):
    write(controlnets["sd1"], tmp_path, "original", "broken")
    path = tmp_path / "broken.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    library = ControlNetLibrary(tmp_path, CPU)
    for call in (library.family, library.load):
        with pytest.raises(CheckpointError) as caught:
            call("broken")
        assert "'broken.safetensors'" in caught.value.message and "corrupt" in caught.value.message


def test_a_file_with_a_missing_tensor_fails_strictly(controlnets, tmp_path):
    state = {k: v.contiguous() for k, v in controlnets["sd1"].state_dict().items()}
    del state["down_blocks.0.resnets.0.norm1.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match=r"'partial.safetensors'.*norm1.weight"):
        ControlNetLibrary(tmp_path, CPU).load("partial")


def test_sd2_controlnets_are_recognised_and_refused_clearly(unets, tmp_path):
    from diffusers import ControlNetModel

    sd2 = ControlNetModel.from_unet(unets["sd2"], conditioning_embedding_out_channels=(4, 8, 16, 32))
    write(sd2, tmp_path, "diffusers-file", "sd21-canny")
    write(sd2, tmp_path, "folder", "sd21-depth")
    library = ControlNetLibrary(tmp_path, CPU)
    for name in ("sd21-canny", "sd21-depth"):
        assert library.family(name) == "sd2"
        with pytest.raises(CheckpointError, match="SD 2.x ControlNet; only SD 1.x and SDXL"):
            library.load(name)


def test_global_pooling_is_read_from_the_yaml_beside_the_file(controlnets, tmp_path):
    write(controlnets["sd1"], tmp_path, "original", "control_v11e_sd15_shuffle")
    (tmp_path / "control_v11e_sd15_shuffle.yaml").write_text(
        "model:\n  params:\n    control_stage_config:\n      params:\n        global_average_pooling: True\n")
    write(controlnets["sd1"], tmp_path, "original", "plain")
    library = ControlNetLibrary(tmp_path, CPU)
    assert library.load("control_v11e_sd15_shuffle").config.global_pool_conditions is True
    assert library.load("plain").config.global_pool_conditions is False


def test_the_original_layout_matches_diffusers_own_converter(controlnets, tmp_path):
    """An independent check of save_original_layout: diffusers reads it back to the same tensors."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    original = controlnets["sd1"]
    save_original_layout(original, tmp_path / "cn.safetensors")
    converted = convert_controlnet_checkpoint(load_file(str(tmp_path / "cn.safetensors")), dict(original.config))
    reference = original.state_dict()
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


def test_tiny_controlnet_is_seeded_and_its_control_image_matters(controlnets, unets):
    for family, controlnet in controlnets.items():
        assert_same_weights(build_tiny_controlnet(unets[family], seed=3), controlnet)
        other = build_tiny_controlnet(unets[family], seed=4)
        assert not torch.equal(other.conv_in.weight, controlnet.conv_in.weight)
        for block in list(controlnet.controlnet_down_blocks) + [controlnet.controlnet_mid_block]:
            assert block.weight.abs().min() > 0
        blank, square = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
        square[:, :, 16:48, 16:48] = 1
        with_blank, with_square = probe(controlnet, family, image=blank), probe(controlnet, family, image=square)
        for a, b in zip(with_blank, with_square):
            assert (a - b).abs().mean() > 0.05 * a.abs().mean()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_published_configs_come_back_from_real_sized_tensor_shapes(family):
    """A real-sized file (shapes only, on the meta device) yields exactly the published config."""
    from diffusers import ControlNetModel

    base = base_config(family)
    with torch.device("meta"):
        published = ControlNetModel.from_config(base)
    if family == "sd1":
        assert sum(p.numel() for p in published.parameters()) == SD15_CONTROLNET_PARAMETERS
    shapes = {k: tuple(v.shape) for k, v in published.state_dict().items()}
    for stored in (shapes, {"control_model." + v: shapes[k] for k, v in diffusers_to_ldm_keys(shapes).items()}):
        names = to_diffusers_names(stored, "real.safetensors")
        derived = config_from_shapes({new: stored[old] for old, new in names.items()}, base)
        with torch.device("meta"):
            rebuilt = ControlNetModel.from_config(derived)
        assert json.loads(rebuilt.to_json_string()) == json.loads(published.to_json_string())


def test_config_folders_are_the_published_ones():
    sd1 = json.loads((CONFIG_ROOT / "controlnet-sd1" / "config.json").read_text())
    sdxl = json.loads((CONFIG_ROOT / "controlnet-sdxl" / "config.json").read_text())
    assert (sd1["block_out_channels"], sd1["cross_attention_dim"], sd1["attention_head_dim"]) == (
        [320, 640, 1280, 1280], 768, 8)
    assert (sdxl["block_out_channels"], sdxl["cross_attention_dim"], sdxl["transformer_layers_per_block"],
            sdxl["projection_class_embeddings_input_dim"]) == ([320, 640, 1280], 2048, [1, 2, 10], 2816)
