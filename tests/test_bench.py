"""The benchmark command (python -m bench) end to end on the tiny architecture: it writes a
checkpoint, starts the app on it, runs both sides and the API, and records what it measured.
Its numbers mean nothing at this size; that it measures the right things does."""

import json

import pytest

from bench.__main__ import main


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_tiny_benchmark_records_both_sides_and_the_api(tmp_path, family):
    argv = ["--tiny", "--device", "cpu", "--steps", "2", "--repeats", "1", "--out", str(tmp_path)]
    if family == "sdxl":
        argv.append("--sdxl")
    else:
        argv.append("--api")  # once is enough: the API path does not depend on the family
    record = main(argv)

    [written] = tmp_path.glob(f"pipeline-{family}-tiny-cpu-*.json")
    assert json.loads(written.read_text())["engine"]["its_ratio"] == record["engine"]["its_ratio"]
    assert record["environment"]["torch"] and record["settings"]["family"] == family
    assert record["checkpoint"]["weights_match_file"] is True
    engine = record["engine"]
    for side in (engine, engine["plain"]):
        assert side["denoise_its"] > 0 and side["seconds_per_image"] > 0 and side["peak_memory_gb"] > 0
    # The same job on the same weights: the same picture, give or take rounding.
    assert engine["image_difference"]["same_size"] and engine["image_difference"]["max_abs"] <= 2
    assert "engine_compiled" not in record, "torch_compile is for CUDA only"
    if family == "sd1":
        api = record["api"]
        assert api["api_s"] > 0 and api["engine_direct_s"] > 0
        assert api["image_difference_api_vs_engine"]["identical"]


@pytest.mark.parametrize("layout", ["flux-dev", "sd3.5-medium"])
def test_tiny_flow_benchmark_records_both_sides(tmp_path, layout):
    argv = ["--tiny", "--family", layout, "--device", "cpu", "--size", "64", "--steps", "2", "--repeats", "1",
            "--out", str(tmp_path)]
    record = main(argv + (["--memory-modes"] if layout == "flux-dev" else []))  # once: not family-specific

    [written] = tmp_path.glob(f"pipeline-{layout}-tiny-cpu-*.json")
    assert json.loads(written.read_text())["engine"]["its_ratio"] == record["engine"]["its_ratio"]
    settings = record["settings"]
    assert settings["family"] == layout and settings["sampler"] == "Euler"
    # FLUX.1-dev: CFG 1 with the distilled guidance; SD 3.5: real CFG 4.5.
    assert settings["cfg"] == (1.0 if layout == "flux-dev" else 4.5)
    checkpoint = record["checkpoint"]
    assert checkpoint["weights_match_file"] is True
    assert ("FLUX.1-dev" if layout == "flux-dev" else "SD 3.5 Medium") in checkpoint["loaded_as"]
    engine = record["engine"]
    for side in (engine, engine["plain"]):
        assert side["denoise_its"] > 0 and side["seconds_per_image"] > 0 and side["peak_memory_gb"] > 0
        assert side["denoiser_calls"] == 2   # one transformer call a step (SD 3.5's CFG halves batched)
    assert engine["its_ratio"] > 0 and engine["seconds_ratio"] > 0
    # The same job on the same weights as FluxPipeline / StableDiffusion3Pipeline: the same picture.
    assert engine["image_difference"]["same_size"] and engine["image_difference"]["max_abs"] <= 2
    assert "engine_compiled" not in record and "reduced_depth" not in record
    if layout == "flux-dev":
        modes = record["memory_modes"]
        assert {"none", "medvram", "lowvram", "t5-cpu"} <= set(modes) and "no VRAM" in modes["note"]
        assert all(modes[name]["denoise_its"] > 0 and modes[name]["peak_gib"] > 0
                   for name in ("medvram", "lowvram", "t5-cpu"))


def test_reduced_depth_keeps_the_widths_and_is_recognised(tmp_path):
    """--depth: the real widths with N blocks of each kind and N T5 layers, loaded by the app as
    the layout measured; built on the meta device and filled, tied T5 embedding kept as one."""
    import torch

    from bench import flow_model
    from engine.families import recognise_flow_file
    from engine.models.loading import CONFIG_ROOT

    root = flow_model.reduced_config_root("sd3.5-medium", 2, tmp_path / "configs")
    config = json.loads((root / "sd3.5-medium" / "transformer" / "config.json").read_text())
    real = json.loads((CONFIG_ROOT / "sd3.5-medium" / "transformer" / "config.json").read_text())
    assert (config["num_layers"], config["dual_attention_layers"]) == (2, [0, 1])
    assert config["num_attention_heads"] == real["num_attention_heads"] and (root / "sdxl").is_dir()
    t5 = json.loads((root / "sd3.5-medium" / "text_encoder_3" / "config.json").read_text())
    assert t5["num_layers"] == 2 and t5["d_model"] == 4096
    assert flow_model.depth_note("flux-dev", 1).startswith("reduced depth: 1 of 19/38 blocks")

    shapes = {f"model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv.weight": (3, 3) for i in range(2)}
    shapes["model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight"] = (3, 3)
    shapes["model.diffusion_model.x_embedder.proj.weight"] = (1, 16, 2, 2)
    shapes["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"] = (6,)
    assert not recognise_flow_file(shapes).supported
    with flow_model.recognised_at_depth("sd3.5-medium", 2):
        found = recognise_flow_file(shapes)
        assert (found.variant, found.config_name) == ("SD 3.5 Medium", "sd3.5-medium")
    assert not recognise_flow_file(shapes).supported

    tiny_root = flow_model.tiny_config_root("flux-dev", tmp_path / "tiny")
    built = flow_model.build_random(tiny_root / "flux-dev", "flux-dev", torch.bfloat16)
    reference = flow_model.build_tiny_flow_components("flux-dev")
    for name, module in built.items():
        params = list(module.parameters())
        assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in params)
        assert sum(p.numel() for p in params) == sum(p.numel() for p in reference[name].parameters())
    t5 = built["text_encoder_2"]
    assert t5.shared.weight is t5.encoder.embed_tokens.weight


def test_cluster_benchmark_runs_one_then_two_workers_on_ray_with_the_same_pictures(tmp_path):
    import json

    from bench.cluster import main as cluster_main
    from tests.support.server import free_port

    assert cluster_main(["--jobs", "4", "--size", "64", "--steps", "2", "--port", str(free_port()),
                         "--out", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.glob("cluster-*.json")).read_text())
    assert record["same_pictures"] and record["scaling_ratio"] > 0
    assert sum(record["one_worker"]["lanes"].values()) == 4 and record["one_worker"]["lanes"] == {"bench1": 4}
    assert sum(record["2_workers"]["lanes"].values()) == 4
