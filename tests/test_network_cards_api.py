"""The extra networks over HTTP: /sdapi/v1/loras and /embeddings in A1111's shapes, and the
cards' thumbnail route, which serves only a listed network's preview, behind the page's login;
and the cards' HTML as the panel renders it."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from safetensors.torch import save_file

from tests.support.network_cards import png, write_lora, write_lora_tree
from tests.support.server import InProcessServer


def _data_dir(root):
    lora = root / "models" / "Lora"
    written = write_lora_tree(lora, 30)
    (lora / "styles" / "secret.txt").write_text("not a picture")
    (lora / "styles" / "orphan.png").write_bytes(png((1, 2, 3)))
    (root / "outside.png").write_bytes(png((4, 5, 6)))
    embeddings = root / "models" / "embeddings"
    embeddings.mkdir(parents=True)
    save_file({"emb_params": torch.zeros(2, 768)}, str(embeddings / "shiny.safetensors"))
    (embeddings / "shiny.preview.png").write_bytes(png((7, 8, 9)))
    return written


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("cards-api")
    written = _data_dir(data)
    with InProcessServer(data, "--demo", "--api") as app:
        app.written = written
        yield app


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    data = tmp_path_factory.mktemp("cards-locked")
    _data_dir(data)
    with InProcessServer(data, "--demo", "--api", "--gradio-auth", "ui:pass") as app:
        yield app


def test_loras_answer_a1111s_shape_with_the_header_metadata_decoded(server):
    listed = {item["name"]: item for item in httpx.get(server.url + "/sdapi/v1/loras").json()}
    assert set(listed) == {record["name"] for record in server.written}
    for record in server.written:
        item = listed[record["name"]]
        assert set(item) == {"name", "alias", "path", "metadata"}
        assert item["path"] == str(record["path"])
        if record["metadata"]:
            expected = {**record["metadata"], "ss_tag_frequency": json.loads(record["metadata"]["ss_tag_frequency"])}
            assert item["metadata"] == expected
            assert item["alias"] == record["metadata"]["ss_output_name"]
        else:
            assert item["metadata"] == {} and item["alias"] == record["name"]


def test_embeddings_keep_their_a1111_shape(server):
    answer = httpx.get(server.url + "/sdapi/v1/embeddings").json()
    assert set(answer) == {"loaded", "skipped"}
    entry = {**answer["loaded"], **answer["skipped"]}["shiny"]
    assert {"step", "sd_checkpoint", "sd_checkpoint_name", "shape", "vectors"} <= set(entry)
    assert (entry["shape"], entry["vectors"]) == (768, 2)


def thumb(base: str, kind: str, file: str, **options) -> httpx.Response:
    return httpx.get(base + "/sd_extra_networks/thumb", params={"kind": kind, "file": file}, **options)


def test_a_preview_is_served_with_cache_headers(server):
    record = next(r for r in server.written if r.get("preview") is not None and r["preview"].suffix == ".png")
    relative = record["preview"].relative_to(server.data_dir / "models" / "Lora").as_posix()
    answer = thumb(server.url, "lora", relative)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png" and "max-age" in answer.headers["cache-control"]
    assert answer.content == record["preview"].read_bytes()
    embedding = thumb(server.url, "textual_inversion", "shiny.preview.png")
    assert embedding.status_code == 200 and embedding.content == png((7, 8, 9))


@pytest.mark.parametrize("kind, file", [
    ("lora", "../../outside.png"), ("lora", "styles/../../../outside.png"), ("lora", "/etc/passwd"),
    ("lora", "styles/secret.txt"), ("lora", "styles/orphan.png"), ("lora", "net-0001-bravo.safetensors"),
    ("lora", "characters/net-0001-bravo.safetensors"), ("lora", "..%2F..%2Foutside.png"), ("lora", ""),
    ("textual_inversion", "../Lora/net-0000-alpha.preview.png"), ("nothing", "shiny.preview.png"),
    ("lora", "shiny.preview.png"), ("checkpoints", "../outside.png"), ("lora", "x" * 300 + ".png"),
    ("lora", "a\x00.png"),
])
def test_anything_but_a_listed_preview_is_a_404(server, kind, file):
    answer = thumb(server.url, kind, file)
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"] == "No such preview"


def test_oversized_parameters_are_refused_not_failed(server):
    for params in ({"kind": "k" * 41, "file": "a.png"}, {"kind": "lora", "file": "a" * 4097}):
        answer = httpx.get(server.url + "/sd_extra_networks/thumb", params=params)
        assert answer.status_code == 422 and "detail" in answer.json()


def test_thumbnails_need_the_pages_login(locked):
    lora = locked.data_dir / "models" / "Lora"
    preview = next(p for p in lora.rglob("*.png") if p.name != "orphan.png")
    relative = preview.relative_to(lora).as_posix()
    assert thumb(locked.url, "lora", relative).status_code == 401
    assert thumb(locked.url, "lora", relative, auth=("ui", "wrong")).status_code == 401
    answer = thumb(locked.url, "lora", relative, auth=("ui", "pass"))
    assert answer.status_code == 200 and answer.content == preview.read_bytes()


def test_the_cards_html_names_each_lora_with_its_text_and_dims_other_families(server):
    from ui.network_cards import cards_html

    server.engine.addons.networks.entries("lora")  # warm
    model = server.ctx.models.current
    assert model is not None and model.family == "sd1"  # the demo model
    page = cards_html(server.ctx, "txt2img", "lora")
    assert page.count('class="en-card') == len(server.written)
    for record in server.written:
        start = page.index(f'data-name="{record["name"]}"')
        card = page[page.rindex("<div class=", 0, start):page.index("</button></div>", start)]
        reference = record["metadata"]["ss_output_name"] if record["metadata"] else record["name"]
        weight = record.get("user", {}).get("preferred weight", 1)
        assert f'data-prompt="&lt;lora:{reference}:{weight:g}&gt;"' in card
        assert ("en-incompatible" in card) == (record["family"] != "sd1"), record
        assert ('loading="lazy"' in card) == ("preview" in record)
        if "civitai" in record:  # its trained words are searched too
            assert f"word{record['name'][4:8].lstrip('0') or '0'}, other" in card
        if "user" in record:
            assert f'data-activation="{record["user"]["activation text"]}"' in card
            assert f'data-negative="{record["user"]["negative text"]}"' in card
    for folder in ("characters", "characters/anime", "styles/painterly/oil", "styles/painterly"):
        assert f'<option value="{folder}">' in page


def test_a_name_with_template_characters_is_escaped(server, tmp_path):
    from ui.network_cards import cards_html

    lora = server.data_dir / "models" / "Lora"
    write_lora(lora / "odd-${x}-{{y}}-<b>.safetensors")
    try:
        page = cards_html(server.ctx, "txt2img", "lora")
        assert "${" not in page and "{{" not in page and "<b>" not in page
        assert "odd-&#36;&#123;x&#125;-&#123;&#123;y&#125;&#125;-&lt;b&gt;" in page
    finally:
        (lora / "odd-${x}-{{y}}-<b>.safetensors").unlink()


def test_the_settings_are_in_the_options(server):
    options = httpx.get(server.url + "/sdapi/v1/options").json()
    assert options["extra_networks_default_multiplier"] == 1.0
    assert options["extra_networks_card_width"] == 0 and options["extra_networks_card_height"] == 0
    assert options["extra_networks_hide_incompatible"] is False
    assert options["lora_preferred_name"] == "Alias from file"


def test_the_card_settings_reach_the_grid(server):
    from ui.network_cards import cards_html

    settings = server.ctx.settings
    before = {key: settings[key] for key in ("extra_networks_hide_incompatible", "extra_networks_card_width",
                                             "extra_networks_default_multiplier", "lora_preferred_name")}
    try:
        settings.update({"extra_networks_hide_incompatible": True, "extra_networks_card_width": 120,
                         "extra_networks_default_multiplier": 0.6, "lora_preferred_name": "Filename"})
        page = cards_html(server.ctx, "img2img", "lora")
        assert 'class="en-pane en-hide-incompatible en-by-family" id="img2img_lora_cards"' in page
        assert "--en-card-w:120px;--en-card-h:240px" in page
        plain = next(r for r in server.written if not r["metadata"] and "user" not in r)
        assert f'data-prompt="&lt;lora:{plain["name"]}:0.6&gt;"' in page
        aliased = next(r for r in server.written if r["metadata"])
        assert f'data-prompt="&lt;lora:{aliased["name"]}:' in page  # the file name, not the alias
    finally:
        settings.update(before)
