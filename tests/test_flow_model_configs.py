"""The config-only diffusers folders of the flow-matching families (FLUX.1-dev, FLUX.1-schnell,
FLUX.1 Fill, SD 3.5 Large, SD 3.5 Medium, SD 3 Medium) and the T5 tokenizer kept beside them.

As in test_model_configs.py, each model is built from its config on the meta device (no memory, no
weights) and its parameter count compared with a count worked out by hand from the architecture
(below) and, where the model's publisher states it, with the published figure. The T5 tokenizer is
checked against ids the T5 documentation publishes and ids the reference SentencePiece
implementation gives for the same spiece.model (see T5_IDS). No network.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

# The same helpers build the SD 1.x/SDXL folders' models (they read any folder under model_configs/).
from tests.test_model_configs import CONFIG_ROOT, build_on_meta, components, read_json

FLUX = ("flux-dev", "flux-schnell", "flux-fill")
SD35 = ("sd3.5-large", "sd3.5-medium")
SD3 = SD35 + ("sd3-medium",)
FOLDERS = FLUX + SD3
T5_TOKENIZER = {**{folder: "tokenizer_2" for folder in FLUX}, **{folder: "tokenizer_3" for folder in SD3}}
PIPELINE_CLASS = {"flux-dev": "FluxPipeline", "flux-schnell": "FluxPipeline", "flux-fill": "FluxFillPipeline",
                  **{folder: "StableDiffusion3Pipeline" for folder in SD3}}


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def flux_transformer_params(guidance: bool, inputs: int = 64) -> int:
    """FLUX.1: width 3072 (24 heads x 128), 19 double-stream and 38 single-stream blocks, MLP 4x,
    64 latent channels in and out (16 channels x 2x2 patches), T5 context 4096, pooled CLIP 768.
    `inputs`: Fill takes 384 per patch (+ 64 of the masked picture, + 256 of the mask)."""
    d, head, mlp = 3072, 128, 4 * 3072
    embed = linear(inputs, d) + linear(4096, d)
    time = linear(256, d) + linear(d, d) + linear(768, d) + linear(d, d)
    if guidance:
        time += linear(256, d) + linear(d, d)
    double = (2 * linear(d, 6 * d)              # adaLN for the image and the text stream
              + 8 * linear(d, d)                # q, k, v, out for both streams
              + 4 * head                        # RMS norms of q and k, both streams
              + 2 * (linear(d, mlp) + linear(mlp, d)))
    single = linear(d, 3 * d) + 3 * linear(d, d) + 2 * head + linear(d, mlp) + linear(d + mlp, d)
    out = linear(d, 2 * d) + linear(d, 64)
    return embed + time + 19 * double + 38 * single + out


def sd3_transformer_params(layers: int, dual_layers: int, qk_norm: bool = True) -> int:
    """MMDiT (SD 3.5): width 64 x layers, one head of 64 per layer, RMS q/k norms, 2x2 patches of
    16 latent channels, T5 context 4096, pooled CLIP-L + bigG 2048. The last block updates only the
    image stream; `dual_layers` blocks have a second (image-only) attention. SD 3 Medium (3.0) has
    no q/k norms (`qk_norm` False)."""
    d, head = 64 * layers, 64
    norms = 4 * head if qk_norm else 0
    embed = 16 * d * 2 * 2 + d + linear(4096, d)
    time = linear(256, d) + linear(d, d) + linear(2048, d) + linear(d, d)
    ff = linear(d, 4 * d) + linear(4 * d, d)
    block = 2 * linear(d, 6 * d) + 8 * linear(d, d) + norms + 2 * ff
    last = linear(d, 6 * d) + linear(d, 2 * d) + 7 * linear(d, d) + norms + ff
    dual_extra = 3 * d * d + 3 * d + 4 * linear(d, d) + 2 * head   # 9-way instead of 6-way adaLN
    out = linear(d, 2 * d) + linear(d, 2 * 2 * 16)
    return embed + time + (layers - 1) * block + last + dual_layers * dual_extra + out


def clip_text_params(width: int, layers: int, vocab: int = 49408, positions: int = 77) -> int:
    per_layer = 4 * linear(width, width) + linear(width, 4 * width) + linear(4 * width, width) + 4 * width
    return vocab * width + positions * width + layers * per_layer + 2 * width


def t5_encoder_params() -> int:
    """T5 v1.1 XXL encoder: 24 layers of 4096, 64 heads x 64, gated-GELU MLP 10240, no biases,
    32128 embeddings, one relative-position table (32 buckets x 64 heads), RMS norms."""
    d, inner, ff = 4096, 64 * 64, 10240
    layer = 4 * d * inner + 3 * d * ff + 2 * d
    return 32128 * d + 32 * 64 + 24 * layer + d


# The SD VAE (83,653,863 with 4 latent channels) widened to 16: encoder conv_out 512 -> 32 and
# decoder conv_in 16 -> 512 (3x3), with no quant convs (4-channel: 8->8 and 4->4 1x1, 92 params).
VAE_16 = 83_653_863 + 512 * 9 * (32 - 8) + (32 - 8) + 512 * 9 * (16 - 4) - (8 * 8 + 8) - (4 * 4 + 4)
CLIP_L = clip_text_params(768, 12)                  # 123,060,480 as in test_model_configs.py
CLIP_L_PROJ = CLIP_L + 768 * 768                    # SD3 keeps CLIP-L's text projection
OPENCLIP_BIGG_PROJ = clip_text_params(1280, 32) + 1280 * 1280
# Published: FLUX.1-dev's transformer holds 11,901,408,320 parameters (the count its release
# reports); the T5 v1.1 XXL encoder 4,762,310,656.
FLUX_DEV_PUBLISHED = 11_901_408_320
T5_XXL_ENCODER_PUBLISHED = 4_762_310_656

EXPECTED_PARAMS = {
    "flux-dev": {"transformer": flux_transformer_params(True), "vae": VAE_16,
                 "text_encoder": CLIP_L, "text_encoder_2": t5_encoder_params()},
    "flux-schnell": {"transformer": flux_transformer_params(False), "vae": VAE_16,
                     "text_encoder": CLIP_L, "text_encoder_2": t5_encoder_params()},
    "sd3.5-large": {"transformer": sd3_transformer_params(38, 0), "vae": VAE_16,
                    "text_encoder": CLIP_L_PROJ, "text_encoder_2": OPENCLIP_BIGG_PROJ,
                    "text_encoder_3": t5_encoder_params()},
    "sd3.5-medium": {"transformer": sd3_transformer_params(24, 13), "vae": VAE_16,
                     "text_encoder": CLIP_L_PROJ, "text_encoder_2": OPENCLIP_BIGG_PROJ,
                     "text_encoder_3": t5_encoder_params()},
    "flux-fill": {"transformer": flux_transformer_params(True, inputs=384), "vae": VAE_16,
                  "text_encoder": CLIP_L, "text_encoder_2": t5_encoder_params()},
    "sd3-medium": {"transformer": sd3_transformer_params(24, 0, qk_norm=False), "vae": VAE_16,
                   "text_encoder": CLIP_L_PROJ, "text_encoder_2": OPENCLIP_BIGG_PROJ,
                   "text_encoder_3": t5_encoder_params()},
}


def test_hand_counts_agree_with_the_published_figures():
    assert EXPECTED_PARAMS["flux-dev"]["transformer"] == FLUX_DEV_PUBLISHED
    assert t5_encoder_params() == T5_XXL_ENCODER_PUBLISHED
    assert CLIP_L == 123_060_480
    # The rounded sizes the model cards give: FLUX.1 "12B", SD 3.5 Large "8.1B", SD 3 Medium "2B".
    assert round(EXPECTED_PARAMS["flux-schnell"]["transformer"] / 1e9) == 12
    assert round(EXPECTED_PARAMS["flux-fill"]["transformer"] / 1e9) == 12
    assert round(EXPECTED_PARAMS["sd3.5-large"]["transformer"] / 1e8) == 81
    assert round(EXPECTED_PARAMS["sd3-medium"]["transformer"] / 1e9) == 2
    # Fill's wider img_in is the only difference from dev: 320 more inputs per patch x 3072.
    assert EXPECTED_PARAMS["flux-fill"]["transformer"] - FLUX_DEV_PUBLISHED == 320 * 3072


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_listed_component_has_its_files(folder):
    index = read_json(CONFIG_ROOT / folder / "model_index.json")
    assert index["_class_name"] == PIPELINE_CLASS[folder]
    for name, (library, class_name) in components(folder).items():
        path = CONFIG_ROOT / folder / name
        assert path.is_dir(), f"{folder}: {name} is listed but {path} is missing"
        if name == T5_TOKENIZER[folder]:
            for file in ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                assert (path / file).is_file(), f"{folder}/{name}/{file} missing"
        elif name.startswith("tokenizer"):
            assert (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
        elif name == "scheduler":
            assert read_json(path / "scheduler_config.json")["_class_name"] == class_name
        elif library == "diffusers":
            assert read_json(path / "config.json")["_class_name"] == class_name
    for path in (CONFIG_ROOT / folder).rglob("*"):   # configs and tokenizer data, no weights
        if path.is_file():
            assert path.suffix in {".json", ".txt", ".model"}, path


@pytest.mark.parametrize("folder,name", [(f, n) for f in FOLDERS for n in EXPECTED_PARAMS[f]])
def test_parameter_counts(folder, name):
    model = build_on_meta(folder, name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[folder][name]


def test_family_specific_values():
    def cfg(folder, name, file="config.json"):
        return read_json(CONFIG_ROOT / folder / name / file)

    dev, schnell, fill = (cfg(f, "scheduler", "scheduler_config.json") for f in FLUX)
    assert fill == dev
    assert dev["use_dynamic_shifting"] is True and (dev["base_shift"], dev["max_shift"]) == (0.5, 1.15)
    assert (dev["base_image_seq_len"], dev["max_image_seq_len"]) == (256, 4096)
    assert schnell["use_dynamic_shifting"] is False and schnell["shift"] == 1.0
    assert cfg("flux-dev", "transformer")["guidance_embeds"] is True
    assert cfg("flux-schnell", "transformer")["guidance_embeds"] is False
    fill_transformer = cfg("flux-fill", "transformer")
    assert (fill_transformer["in_channels"], fill_transformer["out_channels"]) == (384, 64)
    assert fill_transformer["guidance_embeds"] is True
    shared = ("in_channels", "out_channels", "_diffusers_version")   # all else as dev's
    assert {k: v for k, v in fill_transformer.items() if k not in shared} == \
        {k: v for k, v in cfg("flux-dev", "transformer").items() if k not in shared}
    for folder in SD3:
        assert cfg(folder, "scheduler", "scheduler_config.json")["shift"] == 3.0
    for folder in SD35:
        assert cfg(folder, "transformer")["qk_norm"] == "rms_norm"
    medium = cfg("sd3-medium", "transformer")
    assert "qk_norm" not in medium and "dual_attention_layers" not in medium
    assert (medium["num_layers"], medium["caption_projection_dim"], medium["pos_embed_max_size"]) == (24, 1536, 192)
    assert cfg("sd3.5-large", "transformer")["pos_embed_max_size"] == 192
    assert cfg("sd3.5-medium", "transformer")["pos_embed_max_size"] == 384
    assert cfg("sd3.5-medium", "transformer")["dual_attention_layers"] == list(range(13))
    for folder, scale, shift in (("flux-dev", 0.3611, 0.1159), ("sd3.5-large", 1.5305, 0.0609)):
        vae = cfg(folder, "vae")
        assert (vae["latent_channels"], vae["scaling_factor"], vae["shift_factor"]) == (16, scale, shift)
    for folder in FOLDERS:
        t5 = cfg(folder, "text_encoder_2" if folder in FLUX else "text_encoder_3")
        assert t5["feed_forward_proj"] == "gated-gelu"   # else transformers builds a plain ReLU MLP


@pytest.mark.parametrize("folder", FOLDERS)
def test_configs_load_with_their_classes(folder):
    import diffusers
    import transformers

    diffusers.DiffusionPipeline.load_config(CONFIG_ROOT / folder)
    for name, (library, class_name) in components(folder).items():
        path = CONFIG_ROOT / folder / name
        if name == "scheduler":
            cls = getattr(diffusers, class_name)
            assert cls.from_config(cls.load_config(path)).config.num_train_timesteps == 1000
        elif name.startswith("tokenizer"):
            getattr(transformers, class_name).from_pretrained(path, local_files_only=True)


# T5 ids. The first two pairs are the T5 documentation's own examples; every row was also checked
# with the reference implementation (sentencepiece.SentencePieceProcessor on this spiece.model,
# plus </s> = 1), which tokenizes independently of the tokenizers library's tokenizer.json.
T5_IDS = {
    "translate English to German: The house is wonderful.": [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1],
    "Das Haus ist wunderbar.": [644, 4598, 229, 19250, 5, 1],
    "a photo of a cat": [3, 9, 1202, 13, 3, 9, 1712, 1],
    "A 1920s Zeppelin over Reykjavík, 35mm photograph, f/1.8, ISO 400":
        [71, 13978, 7, 4603, 6811, 40, 77, 147, 419, 63, 157, 1191, 208, 2, 157, 6, 3097, 635, 6419, 6, 3,
         89, 87, 16253, 6, 8162, 4837, 1],
    "cyberpunk samurai, neon-lit alley, (masterpiece:1.2)":
        [9738, 102, 6513, 3, 7, 265, 2414, 23, 6, 22432, 18, 4250, 1854, 63, 6, 41, 7429, 8424, 10, 10917, 61, 1],
}


def load_t5_tokenizer(folder: str):
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(CONFIG_ROOT / folder / T5_TOKENIZER[folder], local_files_only=True)


@pytest.mark.parametrize("folder", FOLDERS)
def test_t5_tokenizer_gives_the_known_ids(folder):
    tok = load_t5_tokenizer(folder)
    assert len(tok) == 32100                       # 32,000 pieces + 100 sentinel <extra_id_N>
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == 32099
    assert tok.convert_tokens_to_ids("<extra_id_99>") == 32000
    for text, ids in T5_IDS.items():
        assert tok(text).input_ids == ids, text
    padded = tok("a photo of a cat", padding="max_length", max_length=16).input_ids
    assert padded == T5_IDS["a photo of a cat"] + [0] * 8


def spiece_pieces(path: Path) -> list[tuple[str, float]]:
    """(piece, score) of every entry of a SentencePiece model file, read straight from its protobuf
    (ModelProto field 1: repeated SentencePiece {1: piece, 2: score}), no sentencepiece package."""
    data = path.read_bytes()

    def varint(pos):
        value = shift = 0
        while True:
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos

    pieces, pos = [], 0
    while pos < len(data):
        key, pos = varint(pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = varint(pos)
            body, pos = data[pos:pos + length], pos + length
            if field == 1:
                pieces.append(_piece(body))
        elif wire == 0:
            _, pos = varint(pos)
        elif wire == 5:
            pos += 4
        else:
            pos += 8
    return pieces


def _piece(body: bytes) -> tuple[str, float]:
    piece, score, pos = "", 0.0, 0
    while pos < len(body):
        key = body[pos]
        pos += 1
        if key == 0x0A:                            # field 1, length-delimited: the piece
            length = body[pos]
            piece, pos = body[pos + 1:pos + 1 + length].decode("utf-8"), pos + 1 + length
        elif key == 0x15:                          # field 2, 32-bit float: the score
            score, pos = struct.unpack("<f", body[pos:pos + 4])[0], pos + 4
        elif key == 0x18:                          # field 3, varint: the type
            pos += 1
        else:
            raise AssertionError(f"unexpected field {key:#x} in a SentencePiece entry")
    return piece, score


def test_tokenizer_json_holds_exactly_the_sentencepiece_vocabulary():
    """The fast tokenizer's vocabulary is the SentencePiece model's, piece for piece and score for
    score, so the two cannot tokenize differently by data."""
    folder = CONFIG_ROOT / "flux-dev" / "tokenizer_2"
    pieces = spiece_pieces(folder / "spiece.model")
    assert len(pieces) == 32000
    assert [p for p, _ in pieces[:3]] == ["<pad>", "</s>", "<unk>"]
    vocab = read_json(folder / "tokenizer.json")["model"]["vocab"]
    assert [p for p, _ in vocab[:32000]] == [p for p, _ in pieces]
    assert all(abs(a - b) < 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(vocab, pieces))
    assert [p for p, _ in vocab[32000:]] == [f"<extra_id_{n}>" for n in range(99, -1, -1)]


def test_t5_tokenizer_data_is_shared():
    files = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    for file in files:
        contents = {(CONFIG_ROOT / f / T5_TOKENIZER[f] / file).read_bytes() for f in FOLDERS}
        assert len(contents) == 1, f"{file} differs between the T5 tokenizer folders"


# The CLIP tokenizers of these folders are SD 1.x's (pad "<|endoftext|>") and SDXL's second one (pad "!").
CLIP_TOKENIZERS = {("flux-dev", "tokenizer"): "sd1/tokenizer", ("flux-schnell", "tokenizer"): "sd1/tokenizer",
                   ("sd3.5-large", "tokenizer"): "sd1/tokenizer", ("sd3.5-medium", "tokenizer"): "sd1/tokenizer",
                   ("sd3.5-large", "tokenizer_2"): "sdxl/tokenizer_2",
                   ("sd3.5-medium", "tokenizer_2"): "sdxl/tokenizer_2",
                   ("flux-fill", "tokenizer"): "sd1/tokenizer", ("sd3-medium", "tokenizer"): "sd1/tokenizer",
                   ("sd3-medium", "tokenizer_2"): "sdxl/tokenizer_2"}


@pytest.mark.parametrize("folder,name", sorted(CLIP_TOKENIZERS))
def test_clip_tokenizers_are_the_tested_ones(folder, name):
    same_as = CONFIG_ROOT / CLIP_TOKENIZERS[folder, name]
    for file in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (CONFIG_ROOT / folder / name / file).read_bytes() == (same_as / file).read_bytes(), file
