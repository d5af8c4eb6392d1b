"""A tiny random BLIP captioning model, saved in transformers' folder format as users download it."""

from __future__ import annotations

from pathlib import Path

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "on", "the", "red", "blue",
         "photo", "of", "sitting", "mat", "[DEC]"]


def write_tiny_blip(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    config = BlipConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                         num_attention_heads=2, num_hidden_layers=2, bos_token_id=WORDS.index("[DEC]"),
                         pad_token_id=0, sep_token_id=3, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder
