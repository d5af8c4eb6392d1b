"""Textual-inversion embedding files: every layout users download, read without running code."""

from __future__ import annotations

import builtins
import hashlib
import pickle

import pytest
import torch
from safetensors.torch import save_file

from engine.networks.embedding_files import (
    EmbeddingFile,
    EmbeddingFileError,
    compatible,
    read_embedding,
    scan_embeddings,
)
from engine.errors import UserError

SD1, SD2, CLIP_G = 768, 1024, 1280
SD1_MODEL = {"single": SD1}
SD2_MODEL = {"single": SD2}
SDXL_MODEL = {"clip_l": SD1, "clip_g": CLIP_G}


def vectors(n, width, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=generator).to(dtype)


def sha256_of(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_a1111_pt(path, tensor, **extra):
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(tensor)},  # as trained: a Parameter
        "name": "trained-name",
        "step": 1500,
        "sd_checkpoint": "6ce0161689",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }
    data.update(extra)
    torch.save(data, path)
    return path


def check(embedding, path, name, expected: dict[str, torch.Tensor], layout):
    assert isinstance(embedding, EmbeddingFile)
    assert embedding.name == name
    assert embedding.path == path
    assert embedding.layout == layout
    assert set(embedding.vectors) == set(expected)
    for key, tensor in expected.items():
        got = embedding.vectors[key]
        assert got.dtype == torch.float32
        assert not got.requires_grad
        want = tensor.float().reshape(-1, tensor.shape[-1])
        assert torch.equal(got, want)
    assert embedding.vector_count == next(iter(expected.values())).reshape(
        -1, next(iter(expected.values())).shape[-1]).shape[0]
    assert embedding.dims == {key: t.shape[-1] for key, t in expected.items()}
    assert embedding.sha256 == sha256_of(path)
    assert embedding.short_hash == embedding.sha256[:12] and len(embedding.short_hash) == 12


# Each layout


def test_a1111_pt(tmp_path):
    tensor = vectors(4, SD1)
    path = write_a1111_pt(tmp_path / "bad-hands-5.pt", tensor)
    embedding = read_embedding(path)
    check(embedding, path, "bad-hands-5", {"single": tensor}, "a1111")
    assert embedding.step == 1500
    assert embedding.sd_checkpoint == "6ce0161689"
    assert embedding.sd_checkpoint_name == "v1-5-pruned-emaonly"
    assert embedding.token == "trained-name"
    assert embedding.family == "SD 1.x" and embedding.total_width == SD1


def test_a1111_bin_fp16_sd2(tmp_path):
    tensor = vectors(2, SD2, torch.float16)
    path = tmp_path / "sd2-thing.bin"
    torch.save({"string_to_param": {"*": tensor}}, path)
    embedding = read_embedding(path)
    check(embedding, path, "sd2-thing", {"single": tensor}, "a1111")
    assert embedding.step is None and embedding.sd_checkpoint is None
    assert embedding.family == "SD 2.x"


def test_pt_with_only_emb_params(tmp_path):
    tensor = vectors(3, SD1, torch.bfloat16)
    path = tmp_path / "only-emb.pt"
    torch.save({"emb_params": tensor}, path)
    check(read_embedding(path), path, "only-emb", {"single": tensor}, "emb_params")


def test_safetensors_emb_params(tmp_path):
    tensor = vectors(8, SD1, torch.float16)
    path = tmp_path / "EasyNegative.safetensors"
    save_file({"emb_params": tensor}, str(path), metadata={"format": "pt"})
    embedding = read_embedding(path)
    check(embedding, path, "EasyNegative", {"single": tensor}, "emb_params")
    assert embedding.metadata == {"format": "pt"}


def test_safetensors_sdxl_pair(tmp_path):
    clip_l, clip_g = vectors(6, SD1, torch.float16, 1), vectors(6, CLIP_G, torch.float16, 2)
    path = tmp_path / "negativeXL_D.safetensors"
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))
    embedding = read_embedding(path)
    check(embedding, path, "negativeXL_D", {"clip_l": clip_l, "clip_g": clip_g}, "sdxl")
    assert embedding.vector_count == 6
    assert embedding.dims == {"clip_l": 768, "clip_g": 1280}
    assert embedding.family == "SDXL" and embedding.total_width == 2048


def test_safetensors_single_tensor_under_any_key(tmp_path):
    tensor = vectors(5, SD2, torch.bfloat16)
    path = tmp_path / "odd-key.safetensors"
    save_file({"whatever.weight": tensor}, str(path))
    check(read_embedding(path), path, "odd-key", {"single": tensor}, "diffusers")


def test_diffusers_learned_embeds_bin_one_vector(tmp_path):
    tensor = torch.randn(SD1)  # diffusers saves (dim,) for a single vector
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": tensor}, path)
    embedding = read_embedding(path)
    check(embedding, path, "learned_embeds", {"single": tensor}, "diffusers")
    assert embedding.vector_count == 1
    assert embedding.token == "<cat-toy>"


def test_diffusers_learned_embeds_safetensors_multi_vector(tmp_path):
    tensor = vectors(3, SD2)
    path = tmp_path / "my-concept.safetensors"
    save_file({"<my-concept>": tensor}, str(path))
    embedding = read_embedding(path)
    check(embedding, path, "my-concept", {"single": tensor}, "diffusers")
    assert embedding.token == "<my-concept>"


def test_name_keeps_inner_dots_and_case(tmp_path):
    path = write_a1111_pt(tmp_path / "Style.v2.PT", vectors(1, SD1))
    assert read_embedding(path).name == "Style.v2"


# Refusals


class MakesMarker:
    """Unpickling this opens (creates) a file: the stand-in for a pickle that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    # Sanity check: a plain unpickle of this object really does act.
    proof = tmp_path / "proof-it-acts"
    pickle.loads(pickle.dumps(MakesMarker(proof))).close()
    assert proof.exists()

    marker = tmp_path / "marker"
    zip_format = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": vectors(1, SD1)}, "payload": MakesMarker(marker)}, zip_format)
    legacy = tmp_path / "evil-legacy.bin"
    legacy.write_bytes(pickle.dumps({"emb_params": MakesMarker(marker)}, protocol=2))
    for path in (zip_format, legacy):
        with pytest.raises(EmbeddingFileError) as caught:
            read_embedding(path)
        assert path.name in caught.value.message
        assert "refused" in caught.value.reason
        assert not marker.exists()
    # The reason names what the pickle wanted (builtins.open is io.open).
    assert "io.open" in pytest.raises(EmbeddingFileError, read_embedding, zip_format).value.reason

    embeddings, skipped = scan_embeddings(tmp_path)
    assert embeddings == [] and {name for name, _ in skipped} == {"evil.pt", "evil-legacy.bin"}
    assert not marker.exists()


def test_parameter_dict_of_the_original_repo_is_refused_with_its_name(tmp_path):
    path = tmp_path / "ancient.pt"
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors(1, SD1))})},
               path)
    with pytest.raises(EmbeddingFileError, match="ParameterDict"):
        read_embedding(path)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_garbage_bytes(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not an embedding at all \x00\x01\x02" * 10)
    with pytest.raises(EmbeddingFileError) as caught:
        read_embedding(path)
    assert isinstance(caught.value, UserError)
    assert path.name in str(caught.value)
    assert caught.value.file_name == path.name


def test_empty_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(EmbeddingFileError, match="empty.pt: is empty"):
        read_embedding(empty)
    whole = tmp_path / "whole.safetensors"
    save_file({"emb_params": vectors(2, SD1)}, str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(EmbeddingFileError, match="cut.safetensors"):
        read_embedding(cut)
    cut_pt = tmp_path / "cut.pt"
    write_a1111_pt(tmp_path / "whole.pt", vectors(2, SD1))
    cut_pt.write_bytes((tmp_path / "whole.pt").read_bytes()[:200])
    with pytest.raises(EmbeddingFileError, match="cut.pt"):
        read_embedding(cut_pt)


@pytest.mark.parametrize("content, reason", [
    ({"a": vectors(1, SD1), "b": vectors(1, SD1)}, "not an embedding layout we know"),
    ({"something": 3}, "not an embedding layout we know"),
    ({"string_to_param": {"a": vectors(1, SD1), "b": vectors(1, SD1)}}, "holds 2 tensors"),
    ({"emb_params": torch.zeros(2, 3, 4)}, "shape (2, 3, 4)"),
    ({"emb_params": torch.zeros(2, 768, dtype=torch.int64)}, "not floating-point"),
    ({"emb_params": torch.zeros(0, 768)}, "empty"),
    ({"emb_params": torch.full((1, 768), float("nan"))}, "NaN"),
    ({"clip_l": vectors(2, SD1)}, "not its 'clip_g'"),
    ({"clip_l": vectors(2, SD1), "clip_g": vectors(3, CLIP_G)}, "must match"),
    ([1, 2, 3], "not the dict of tensors"),
])
def test_unknown_or_wrong_layouts(tmp_path, content, reason):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(EmbeddingFileError) as caught:
        read_embedding(path)
    assert "odd.pt" in caught.value.message
    assert reason in caught.value.reason


def test_unknown_safetensors_layout(tmp_path):
    path = tmp_path / "lora-by-mistake.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 4)},
              str(path))
    with pytest.raises(EmbeddingFileError, match="lora-by-mistake.safetensors: is not an embedding layout"):
        read_embedding(path)


def test_wrong_suffix_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hi")
    with pytest.raises(EmbeddingFileError, match="notes.txt"):
        read_embedding(path)


# Scanning


def test_scan_returns_loaded_and_skipped(tmp_path):
    folder = tmp_path / "embeddings"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / ".hidden-dir").mkdir()
    write_a1111_pt(folder / "zeta.pt", vectors(1, SD1))
    save_file({"emb_params": vectors(2, SD2)}, str(folder / "sub" / "Alpha.safetensors"))
    save_file({"clip_l": vectors(1, SD1), "clip_g": vectors(1, CLIP_G)},
              str(folder / "sub" / "deeper" / "mid.safetensors"))
    torch.save({"<tok>": torch.randn(SD1)}, folder / "beta.bin")
    (folder / "broken.pt").write_bytes(b"nope")
    write_a1111_pt(folder / "sub" / "zeta.bin", vectors(1, SD1))  # same name as zeta.pt
    write_a1111_pt(folder / ".hidden.pt", vectors(1, SD1))
    write_a1111_pt(folder / ".hidden-dir" / "inside.pt", vectors(1, SD1))
    (folder / "readme.txt").write_text("ignored")
    (folder / "zeta.pt.optim").write_bytes(b"ignored")
    (folder / "preview.png").write_bytes(b"ignored")

    embeddings, skipped = scan_embeddings(folder)
    assert [e.name for e in embeddings] == ["Alpha", "beta", "mid", "zeta"]
    assert embeddings[3].path == folder / "zeta.pt"
    assert [name for name, _ in skipped] == ["broken.pt", "sub/zeta.bin"]
    assert "PyTorch" in skipped[0][1]
    assert "already loaded from zeta.pt" in skipped[1][1]


def test_scan_of_missing_or_empty_folder(tmp_path):
    assert scan_embeddings(tmp_path / "missing") == ([], [])
    assert scan_embeddings(tmp_path) == ([], [])


def test_scan_survives_a_symlink_loop(tmp_path):
    write_a1111_pt(tmp_path / "one.pt", vectors(1, SD1))
    try:
        (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not available")
    embeddings, skipped = scan_embeddings(tmp_path)
    assert [e.name for e in embeddings] == ["one"] and skipped == []


# Compatibility


@pytest.fixture
def family_files(tmp_path):
    sd1 = tmp_path / "sd1.pt"
    write_a1111_pt(sd1, vectors(1, SD1))
    sd2 = tmp_path / "sd2.safetensors"
    save_file({"emb_params": vectors(1, SD2)}, str(sd2))
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"clip_l": vectors(1, SD1), "clip_g": vectors(1, CLIP_G)}, str(sdxl))
    return {name: read_embedding(path) for name, path in
            {"sd1": sd1, "sd2": sd2, "sdxl": sdxl}.items()}


def test_compatible_pairings(family_files):
    sd1, sd2, sdxl = family_files["sd1"], family_files["sd2"], family_files["sdxl"]
    assert compatible(sd1, SD1_MODEL) is None
    assert compatible(sd2, SD2_MODEL) is None
    assert compatible(sdxl, SDXL_MODEL) is None

    assert compatible(sd1, SD2_MODEL) == "vector width 768 (SD 1.x) does not match this model's 1024 (SD 2.x)"
    assert compatible(sd2, SD1_MODEL) == "vector width 1024 (SD 2.x) does not match this model's 768 (SD 1.x)"
    assert compatible(sdxl, SD1_MODEL).startswith("made for SDXL")
    assert compatible(sdxl, SD2_MODEL).startswith("made for SDXL")
    assert compatible(sd1, SDXL_MODEL).startswith("made for SD 1.x")
    assert compatible(sd2, SDXL_MODEL).startswith("made for SD 2.x")


def test_compatible_accepts_a_one_entry_dict_under_any_key(family_files):
    assert compatible(family_files["sd1"], {"clip_l": 768}) is None
    assert "does not match" in compatible(family_files["sd1"], {"text_encoder": 1024})


def test_compatible_sdxl_with_other_widths(family_files):
    reason = compatible(family_files["sdxl"], {"clip_l": 768, "clip_g": 1024})
    assert reason == "clip_g width 1280 does not match this model's 1024"


def test_error_is_a_user_error_with_status():
    error = EmbeddingFileError("x.pt: broken", file_name="x.pt", reason="broken")
    assert isinstance(error, UserError) and error.status == 400 and error.reason == "broken"
    assert EmbeddingFileError("plain").reason == "plain"

