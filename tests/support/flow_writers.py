"""Test-only helpers around bench/flow_files.py, which writes the single files FLUX.1 and SD 3.x
models are published in (BFL / Stability key names, all-in-one or one part per file): fp8 copies
as the "fp8" downloads store them, and a bit-for-bit comparison of loaded weights. The writers are
re-exported here, so tests import them from one place."""

from __future__ import annotations

import torch

from bench.flow_files import (  # noqa: F401  (re-exported for the tests)
    ENCODER_COMPONENTS,
    ENCODER_PREFIXES,
    TRANSFORMER_PREFIX,
    encoder_state,
    flux_to_bfl,
    sd3_to_original,
    single_file_state,
    transformer_state,
    write,
    write_config_folder,
)


def to_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored as fp8 e4m3fn as the "fp8" downloads are: the matrices only; norms, biases and
    embeddings of one dimension stay as they were."""
    return {key: value.to(torch.float8_e4m3fn) if value.ndim >= 2 and value.is_floating_point() else value
            for key, value in state.items()}


def assert_same_weights(expected: dict, loaded: dict, cast=None):
    """Same names, and every tensor equal bit for bit (`cast`: the matrices equal to their cast
    to that dtype and back, as fp8 files store them)."""
    assert sorted(expected) == sorted(loaded)
    for key, value in expected.items():
        want = value if cast is None or value.ndim < 2 else value.to(cast).to(value.dtype)
        assert torch.equal(want, loaded[key].to(value.dtype)), key
