"""The extra networks' catalogue (engine/networks/network_catalogue.py): what each card shows,
read from the files beside each network as A1111 lays them out, remembered per file signature,
and written back only beside a listed network inside its folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.errors import RequestError
from engine.networks import network_files
from engine.networks.network_catalogue import (
    CHECKPOINT,
    EMBEDDING,
    LORA,
    NetworkCatalogue,
)
from tests.support.network_cards import png, write_lora, write_lora_tree


@pytest.fixture
def folders(tmp_path):
    lora, embeddings = tmp_path / "Lora", tmp_path / "embeddings"
    lora.mkdir()
    embeddings.mkdir()
    return lora, embeddings


def catalogue_for(folders) -> NetworkCatalogue:
    return NetworkCatalogue([folders[0]], [folders[1]])


def by_name(entries):
    return {entry.name: entry for entry in entries}


def test_a_tree_of_loras_lists_every_file_with_its_folder_preview_json_civitai_and_metadata(folders):
    written = write_lora_tree(folders[0], 60)
    entries = by_name(catalogue_for(folders).entries(LORA))
    assert set(entries) == {record["name"] for record in written}
    for record in written:
        entry = entries[record["name"]]
        assert entry.folder == record["folder"]
        expected_relative = f"{record['folder']}/{record['name']}.safetensors".lstrip("/")
        assert entry.relative == expected_relative
        assert entry.size == record["path"].stat().st_size and entry.mtime == record["mtime"]
        assert entry.preview == record.get("preview")
        assert entry.user == record.get("user", {})
        assert entry.civitai == record.get("civitai", {})
        assert entry.family == record["family"]
        if record["metadata"]:
            assert entry.alias == record["metadata"]["ss_output_name"]
            # JSON-valued keys decoded as A1111 decodes them, the others kept as text
            assert entry.metadata["ss_tag_frequency"] == json.loads(record["metadata"]["ss_tag_frequency"])
            assert entry.metadata["ss_resolution"] == "(512, 512)"
        else:
            assert entry.alias == record["name"] and entry.metadata == {}


def test_the_preview_is_found_in_a1111s_order(folders):
    lora = write_lora(folders[0] / "pick.safetensors")
    catalogue = catalogue_for(folders)
    assert catalogue.entries(LORA)[0].preview is None
    order = ["pick.webp", "pick.preview.jpeg", "pick.jpeg", "pick.preview.jpg", "pick.jpg",
             "pick.preview.png", "pick.png"]  # least preferred first
    for name in order:
        (lora.parent / name).write_bytes(png((1, 2, 3)))
        assert catalogue.entries(LORA)[0].preview == lora.parent / name, name
    # a picture of another name, or with another middle part, is nobody's preview
    assert network_files.preview_of(lora.parent / "other") is None


def test_family_from_the_user_then_the_training_metadata_then_the_keys(folders):
    root = folders[0]
    write_lora(root / "by-keys-xl.safetensors", "sdxl")
    write_lora(root / "by-keys-sd2.safetensors", "sd2")
    write_lora(root / "by-keys-flux.safetensors", "flux")
    write_lora(root / "by-keys-sd3.safetensors", "sd3")
    write_lora(root / "by-metadata.safetensors", "sd1", {"ss_base_model_version": "sdxl_base_v1-0"})
    write_lora(root / "by-v2.safetensors", "sd1", {"ss_v2": "True"})
    write_lora(root / "by-spec.safetensors", "sd1", {"modelspec.architecture": "flux-1-dev/lora"})
    write_lora(root / "by-user.safetensors", "sdxl")
    (root / "by-user.json").write_text(json.dumps({"sd version": "SD1"}))
    save_file({"some_other_tensor": torch.zeros(3)}, str(root / "unknown.safetensors"))
    families = {name: entry.family for name, entry in by_name(catalogue_for(folders).entries(LORA)).items()}
    assert families == {"by-keys-xl": "sdxl", "by-keys-sd2": "sd2", "by-keys-flux": "flux", "by-keys-sd3": "sd3",
                        "by-metadata": "sdxl", "by-v2": "sd2", "by-spec": "flux", "by-user": "sd1", "unknown": None}


def test_embeddings_family_from_their_widths_and_checkpoints_from_the_list_given(folders, tmp_path):
    save_file({"emb_params": torch.zeros(2, 768)}, str(folders[1] / "one.safetensors"))
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, str(folders[1] / "xl.safetensors"))
    (folders[1] / "old.pt").write_bytes(b"not read when listed")
    catalogue = catalogue_for(folders)
    assert {e.name: e.family for e in catalogue.entries(EMBEDDING)} == {"one": "sd1", "xl": "sdxl", "old": None}
    models = tmp_path / "Stable-diffusion"
    (models / "sub").mkdir(parents=True)
    (models / "sub" / "base.safetensors").write_bytes(b"x" * 10)
    (models / "sub" / "base.preview.png").write_bytes(png((9, 9, 9)))
    catalogue.set_checkpoints([models], [("sub/base.safetensors [abc]", models / "sub" / "base.safetensors")])
    [checkpoint] = catalogue.entries(CHECKPOINT)
    assert (checkpoint.name, checkpoint.folder, checkpoint.title) == ("base", "sub", "sub/base.safetensors [abc]")
    assert checkpoint.preview_relative == "sub/base.preview.png"


def test_headers_are_read_once_per_file_signature(folders, monkeypatch):
    write_lora_tree(folders[0], 12)
    catalogue = catalogue_for(folders)
    reads = []
    real = network_files.read_safetensors_header
    monkeypatch.setattr(network_files, "read_safetensors_header", lambda path: reads.append(path) or real(path))
    catalogue.entries(LORA)
    assert len(reads) == 12
    catalogue.entries(LORA)
    assert len(reads) == 12, "nothing changed: nothing read again"
    changed = folders[0] / "net-0000-alpha.safetensors"
    write_lora(changed, "sdxl")
    os.utime(changed, (1_800_000_000, 1_800_000_000))
    assert by_name(catalogue.entries(LORA))["net-0000-alpha"].family == "sdxl"
    assert reads[12:] == [changed]


def test_saving_the_user_metadata_writes_a1111s_json_beside_the_file_keeping_other_keys(folders):
    lora = write_lora(folders[0] / "deep" / "styled.safetensors")
    (lora.parent / "styled.json").write_text(json.dumps({"notes": "old", "custom key": [1, 2]}))
    catalogue = catalogue_for(folders)
    values = {"description": "A style", "activation text": "styled, ink", "preferred weight": "0.7",
              "negative text": "blurry", "sd version": "SDXL", "notes": "new"}
    entry = catalogue.save_user_metadata(LORA, "deep/styled.safetensors", values)
    on_disk = json.loads((lora.parent / "styled.json").read_text())
    assert on_disk == {"description": "A style", "activation text": "styled, ink", "preferred weight": 0.7,
                       "negative text": "blurry", "sd version": "SDXL", "notes": "new", "custom key": [1, 2]}
    assert entry.user == on_disk and entry.family == "sdxl"
    assert not [p for p in lora.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("values, words", [
    ({"preferred weight": "heavy"}, "preferred weight must be a number"),
    ({"preferred weight": 40}, "between -10 and 10"),
    ({"sd version": "SD9"}, "sd version must be one of"),
    ({"description": "x" * 20_001}, "at most 20000 characters"),
    ({"script": "alert(1)"}, "Unknown metadata field 'script'"),
])
def test_bad_metadata_is_refused_with_its_name(folders, values, words):
    write_lora(folders[0] / "a.safetensors")
    with pytest.raises(RequestError, match=words):
        catalogue_for(folders).save_user_metadata(LORA, "a.safetensors", values)
    assert not (folders[0] / "a.json").exists()


@pytest.mark.parametrize("relative", ["../outside.safetensors", "/etc/passwd", "missing.safetensors",
                                      "a.json", "", "sub/../a.safetensors"])
def test_writing_names_only_listed_networks(folders, tmp_path, relative):
    write_lora(folders[0] / "a.safetensors")
    write_lora(tmp_path / "outside.safetensors")
    catalogue = catalogue_for(folders)
    with pytest.raises(RequestError, match="network"):
        catalogue.save_user_metadata(LORA, relative, {"notes": "x"})
    with pytest.raises(RequestError):
        catalogue.save_preview(LORA, relative, Image.new("RGB", (4, 4)))
    assert not (tmp_path / "outside.json").exists() and not (tmp_path / "outside.png").exists()


def test_a_network_reached_through_a_link_out_of_its_folder_is_not_written_beside(folders, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_lora(elsewhere / "linked.safetensors")
    os.symlink(elsewhere, folders[0] / "linked-dir")
    catalogue = catalogue_for(folders)
    assert "linked-dir/linked.safetensors" in {e.relative for e in catalogue.entries(LORA)}
    with pytest.raises(RequestError, match="not inside its network folder"):
        catalogue.save_user_metadata(LORA, "linked-dir/linked.safetensors", {"notes": "x"})
    assert not (elsewhere / "linked.json").exists()


def test_replacing_the_preview_writes_name_png_which_then_wins(folders):
    lora = write_lora(folders[0] / "pic.safetensors")
    (lora.parent / "pic.preview.png").write_bytes(png((0, 0, 255)))
    catalogue = catalogue_for(folders)
    target = catalogue.save_preview(LORA, "pic.safetensors", Image.new("RGB", (8, 6), (255, 0, 0)))
    assert target == lora.parent / "pic.png"
    with Image.open(target) as saved:
        assert saved.format == "PNG" and saved.size == (8, 6) and saved.getpixel((0, 0)) == (255, 0, 0)
    assert catalogue.entries(LORA)[0].preview == target


def test_the_thumbnail_lookup_gives_only_a_listed_networks_preview(folders, tmp_path):
    lora = write_lora(folders[0] / "sub" / "a.safetensors")
    (lora.parent / "a.preview.png").write_bytes(png((1, 1, 1)))
    (lora.parent / "a.jpg").write_bytes(png((1, 1, 1)))  # a lower-ranked candidate: not the preview
    (lora.parent / "stray.png").write_bytes(png((1, 1, 1)))  # no network of that name
    (tmp_path / "secret.png").write_bytes(png((1, 1, 1)))
    os.symlink(tmp_path / "secret.png", lora.parent / "b.png")
    write_lora(lora.parent / "b.safetensors")
    catalogue = catalogue_for(folders)
    assert catalogue.preview_file(LORA, "sub/a.preview.png") == (lora.parent / "a.preview.png").resolve()
    for refused in ("sub/a.jpg", "sub/stray.png", "sub/a.safetensors", "../secret.png", "sub/../../secret.png",
                    "/etc/passwd", "sub/b.png", "sub\\a.preview.png", "a.preview.png"):
        assert catalogue.preview_file(LORA, refused) is None, refused
    assert catalogue.preview_file("nothing", "sub/a.preview.png") is None


def test_2000_loras_list_from_the_cache_without_reading_a_header(folders, monkeypatch):
    write_lora_tree(folders[0], 2000)
    catalogue = catalogue_for(folders)
    assert len(catalogue.entries(LORA)) == 2000
    monkeypatch.setattr(network_files, "read_safetensors_header",
                        lambda path: pytest.fail(f"read {path} again"))
    assert len(catalogue.entries(LORA)) == 2000


def test_the_header_metadata_decoding_matches_a1111(tmp_path):
    metadata = {"ss_tag_frequency": '{"a": {"x": 1}}', "ss_bad": "{not json", "ss_text": "plain", "n": "3"}
    assert network_files.decoded_metadata(metadata) == {
        "ss_tag_frequency": {"a": {"x": 1}}, "ss_bad": "{not json", "ss_text": "plain", "n": "3"}
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    assert network_files.read_safetensors_header(broken) == ({}, {})
    assert network_files.read_safetensors_header(Path(tmp_path / "absent.safetensors")) == ({}, {})


def test_a_name_too_long_is_no_preview_and_a_failed_write_is_named(folders):
    catalogue = catalogue_for(folders)
    assert catalogue.preview_file(LORA, "x" * 300 + ".png") is None
    write_lora(folders[0] / "blocked.safetensors")
    (folders[0] / "blocked.json").mkdir()  # a folder where the file should go
    with pytest.raises(RequestError, match="Could not write blocked.json"):
        catalogue.save_user_metadata(LORA, "blocked.safetensors", {"notes": "x"})
