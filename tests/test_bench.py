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
