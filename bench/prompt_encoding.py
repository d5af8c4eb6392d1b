"""How much a long weighted prompt costs to encode, relative to a short plain one.

    python -m bench.prompt_encoding [--repeats 30]

Runs on the built-in tiny demo model (real CLIP tokenizer, tiny text encoder), both prompts in the
same process, alternating, and reports the median time of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.prompts.conditioning import PromptEncoder
from engine.models.loading import CONFIG_ROOT
from engine.models.tiny_models import build_demo_pipeline

from .record import write

PLAIN = "a photo of a cat sitting on a red sofa"


def weighted_prompt(target_tokens: int, tokenizer, editing: bool = False) -> str:
    """A prompt of about `target_tokens` tokens full of emphasis and nesting (and, with
    `editing`, prompt editing, which makes a second text to encode)."""
    parts, count = [], 0
    index = 0
    kinds = 4 if editing else 3
    while count < target_tokens:
        part = [f"(detailed {index}:1.2)", f"[soft light {index}]", f"((sharp {index}))",
                f"[old:new {index}:0.5]"][index % kinds]
        parts.append(part)
        count = len(tokenizer.tokenize(", ".join(parts)))
        index += 1
    return ", ".join(parts)


def time_encode(encoder_factory, text: str, steps: int) -> float:
    encoder = encoder_factory()  # a fresh encoder: no cached encodings from the last round
    start = time.perf_counter()
    encoder.encode_schedules(text, "", steps)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=300)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    pipe = build_demo_pipeline(CONFIG_ROOT / "sd1" / "tokenizer")
    texts = {"plain": PLAIN, "weighted": weighted_prompt(args.tokens, pipe.tokenizer),
             "weighted+editing": weighted_prompt(args.tokens, pipe.tokenizer, editing=True)}
    tokens = {name: len(pipe.tokenizer.tokenize(text)) for name, text in texts.items()}

    def factory():
        return PromptEncoder(pipe, "sd1")

    with torch.inference_mode():
        for text in texts.values():  # warm-up
            time_encode(factory, text, 20)
        times: dict[str, list[float]] = {name: [] for name in texts}
        for _ in range(args.repeats):  # interleaved, so drift affects all alike
            for name, text in texts.items():
                times[name].append(time_encode(factory, text, 20))
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    for name in texts:
        ratio = medians[name] / medians["plain"]
        print(f"{name:17s}: {tokens[name]:4d} tokens, median {medians[name]:8.3f} ms, "
              f"{ratio:5.2f}x plain")
    path = write("prompt_encoding", {"repeats": args.repeats, "tokens": tokens, "median_ms": medians,
                                     "ratio_weighted_to_plain": medians["weighted"] / medians["plain"],
                                     "ratio_editing_to_plain":
                                         medians["weighted+editing"] / medians["plain"]})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
