"""A small CLIP BPE tokenizer that can be written to disk without any download.

The layout is that of the real CLIP tokenizer (``vocab.json`` + ``merges.txt`` +
``tokenizer_config.json``): the 256 byte-level characters, the same characters with the
end-of-word marker ``</w>``, one entry per merge, then ``<|startoftext|>`` and
``<|endoftext|>`` as the last two ids.  Because every byte has a token, any text encodes.
"""

from __future__ import annotations

import json
import os

# (left, right) pairs; every merged result is added to the vocabulary in this order.
_MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("d", "o"),
    ("do", "g</w>"),
    ("o", "f</w>"),
    ("p", "h"),
    ("ph", "o"),
    ("pho", "t"),
    ("phot", "o</w>"),
]

_SPECIAL_BOS = "<|startoftext|>"
_SPECIAL_EOS = "<|endoftext|>"


def byte_level_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE, in CLIP's order.

    Printable Latin-1 bytes stand for themselves; the remaining bytes (controls, space,
    soft hyphen, ...) are given the code points 256, 257, ... in byte order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    taken = set(printable)
    extra = 0
    chars = [chr(b) for b in printable]
    for b in range(256):
        if b not in taken:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_vocab() -> dict[str, int]:
    tokens = byte_level_chars()
    tokens = tokens + [c + "</w>" for c in tokens]
    for left, right in _MERGES:
        tokens.append(left + right)
    tokens += [_SPECIAL_BOS, _SPECIAL_EOS]
    if len(set(tokens)) != len(tokens):  # pragma: no cover - guards edits to _MERGES
        raise AssertionError("duplicate token in tiny vocabulary")
    return {tok: i for i, tok in enumerate(tokens)}


def write_tiny_clip_tokenizer(dest_dir, pad_token: str = _SPECIAL_EOS) -> str:
    """Write a tiny offline CLIP tokenizer to ``dest_dir`` and return the folder path.

    ``pad_token`` is ``<|endoftext|>`` like SD 1.x, or ``"!"`` like SD 2.x / SDXL's second
    tokenizer.
    """
    dest_dir = os.fspath(dest_dir)
    os.makedirs(dest_dir, exist_ok=True)
    vocab = tiny_vocab()
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the tiny vocabulary")
    with open(os.path.join(dest_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(dest_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for left, right in _MERGES:
            f.write(f"{left} {right}\n")
    special = {
        "bos_token": _SPECIAL_BOS,
        "eos_token": _SPECIAL_EOS,
        "unk_token": _SPECIAL_EOS,
        "pad_token": pad_token,
    }
    with open(os.path.join(dest_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    with open(os.path.join(dest_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return dest_dir
