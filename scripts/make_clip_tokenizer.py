#!/usr/bin/env python3
"""Build a CLIP BPE tokenizer folder (Hugging Face `CLIPTokenizer` layout) with no hub access.

Input: CLIP's BPE merge list `bpe_simple_vocab_16e6.txt.gz`, as shipped inside the
open_clip_torch wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`), e.g.

    pip download --no-deps open_clip_torch==3.3.0 -d /tmp/oc
    python -c "import zipfile; zipfile.ZipFile(next(__import__('glob').iglob('/tmp/oc/*.whl'))) \
        .extract('open_clip/bpe_simple_vocab_16e6.txt.gz', '/tmp/oc')"

Output folder files: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json.

    python scripts/make_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz \
        engine/models/model_configs/sd1/tokenizer --pad-token "<|endoftext|>"

SD 1.x and SDXL's first tokenizer pad with "<|endoftext|>" (id 49407); SD 2.x and SDXL's
second tokenizer pad with "!" (id 0).

The vocabulary is laid out as CLIP defines it: the 256 byte-level symbols (GPT-2 style
byte-to-unicode table, printable bytes first), the same 256 symbols with "</w>" appended,
one token per merge (merge lines 1..48894 of the file; line 0 is a header), then
"<|startoftext|>" and "<|endoftext|>": 49408 tokens in all.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # 48894: the merges CLIP's released tokenizer uses
VOCAB_SIZE = 256 * 2 + N_MERGES + 2  # 49408
MAX_LENGTH = 77


def byte_symbols() -> list[str]:
    """The 256 byte-level symbols in CLIP's order.

    Bytes that are printable Latin-1 characters map to themselves and come first, in byte
    order; the remaining bytes map to code points 256, 257, ... in byte order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    printable_set = set(printable)
    extra = [b for b in range(256) if b not in printable_set]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def read_merges(bpe_gz: Path) -> list[str]:
    lines = gzip.open(bpe_gz, "rb").read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES:
        raise ValueError(f"{bpe_gz}: expected at least {N_MERGES + 1} lines, got {len(lines)}")
    for i, line in enumerate(merges, start=1):
        if len(line.split(" ")) != 2:
            raise ValueError(f"{bpe_gz}: line {i} is not a merge pair: {line!r}")
    return merges


def build_vocab(merges: list[str]) -> dict[str, int]:
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [m.replace(" ", "") for m in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab


def write_tokenizer(bpe_gz: Path, out_dir: Path, pad_token: str) -> None:
    merges = read_merges(bpe_gz)
    vocab = build_vocab(merges)
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")

    config = {
        "add_prefix_space": False,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": EOS,
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bpe_gz", type=Path, help="path of bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("out_dir", type=Path, help="tokenizer folder to write")
    parser.add_argument("--pad-token", default=EOS, help=f'pad token: "{EOS}" (default) or "!"')
    args = parser.parse_args(argv)
    write_tokenizer(args.bpe_gz, args.out_dir, args.pad_token)
    print(f"wrote {args.out_dir} (pad {args.pad_token!r})")


if __name__ == "__main__":
    main()
