"""The "NV" noise source: torch's CUDA `randn` reproduced on the CPU with numpy.

torch draws normal numbers on an NVIDIA card with cuRAND's Philox4x32-10 counter-based generator
(Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11). Every element of a tensor
is computed by its own thread, which starts Philox at the counter

    (call offset, 0, element index low word, element index high word)

with the 64-bit seed as the key (low word first), and turns the first two 32-bit words of the
output into one normal number by the Box-Muller transform (the sine half). The call offset is the
generator's Philox offset: one more for every `randn` call of a latent-sized tensor.

This holds while a tensor has no more elements than the card runs threads in one wave (its SM
count x threads per SM: 43,008 on the smallest RTX 30 card, 270,336 on an H100); beyond that torch
lets threads loop and the stream depends on the card. SD latents (4x128x128 = 65,536 per image at
1024 px) are below that on the cards people generate with, which is why A1111's "NV" setting, the
same reproduction, matches pictures made on NVIDIA GPUs.

The arithmetic after Philox follows A1111's `rng_philox.py` rather than the CUDA kernel's float32
`sinf`/`logf`: the words are scaled by float32 constants but the products, logarithm, root and
sine are taken in float64 and rounded to float32 at the end. That agrees with CUDA to about one
unit in the last place and is exactly what A1111's NV source yields.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUNDS = 10
# Philox4x32 round multipliers and the Weyl sequence that bumps the key between rounds.
_MULTIPLIER_A = np.uint64(0xD2511F53)
_MULTIPLIER_B = np.uint64(0xCD9E8D57)
_KEY_BUMP = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))

_LOW_32 = np.uint64(0xFFFFFFFF)
_SHIFT_32 = np.uint64(32)
_WORD = 1 << 32

# cuRAND's 2^-32 and 2^-32 x 2pi, as float32 constants (CURAND_2POW32_INV, CURAND_2POW32_INV_2PI).
_TWO_POW_MINUS_32 = np.float32(2.3283064e-10)
_TWO_POW_MINUS_32_2PI = np.float32(2.3283064e-10 * 6.2831855)


def _high_and_low(word: np.ndarray, multiplier: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit product of 32-bit words with a multiplier, split into (high, low) words."""
    product = word.astype(np.uint64) * multiplier
    return (product >> _SHIFT_32).astype(np.uint32), (product & _LOW_32).astype(np.uint32)


def _philox_words(c0, c1, c2, c3, key0: np.ndarray, key1: np.ndarray, rounds: int) -> list[np.ndarray]:
    """Philox4x32 over columns of counter words; the key words are uint32 arrays that broadcast
    against them (one element when all columns share the key). Array addition wraps at 2^32."""
    for round_index in range(rounds):
        if round_index:
            key0 = key0 + _KEY_BUMP[0]
            key1 = key1 + _KEY_BUMP[1]
        high_a, low_a = _high_and_low(c0, _MULTIPLIER_A)
        high_b, low_b = _high_and_low(c2, _MULTIPLIER_B)
        c0, c1, c2, c3 = high_b ^ c1 ^ key0, low_b, high_a ^ c3 ^ key1, low_a
    return [c0, c1, c2, c3]


def philox4x32(counter: np.ndarray, key: np.ndarray | Sequence[int], rounds: int = ROUNDS) -> np.ndarray:
    """Philox4x32-`rounds` of each column of `counter` (4, n) under `key`: two words for all
    columns, or (2, n) with a key per column. Returns the (4, n) uint32 output words."""
    counter = np.asarray(counter, dtype=np.uint32).reshape(4, -1)
    key = np.asarray(key, dtype=np.uint32).reshape(2, -1)
    words = _philox_words(counter[0], counter[1], counter[2], counter[3], key[0], key[1], rounds)
    return np.stack(words)


def box_muller_sine(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """cuRAND's Box-Muller for the first normal of a pair: uniform words shifted by half a step
    away from 0, radius sqrt(-2 ln u), angle from the second word; only the sine half is used.
    The uint32 x float32 products promote to float64, as in A1111's numpy code."""
    u = first * _TWO_POW_MINUS_32 + _TWO_POW_MINUS_32 / 2
    angle = second * _TWO_POW_MINUS_32_2PI + _TWO_POW_MINUS_32_2PI / 2
    radius = np.sqrt(-2.0 * np.log(u))
    return (radius * np.sin(angle)).astype(np.float32)


def _element_count(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


class PhiloxGenerator:
    """A seeded stream of normal numbers as `torch.randn` draws them from a CUDA generator: each
    `randn` call is one kernel launch at the next Philox offset."""

    def __init__(self, seed: int):
        self.seed = int(seed) % (1 << 64)  # torch reads negative seeds as their 64-bit pattern
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        """The next draw, of `shape`, float32."""
        shape = tuple(int(size) for size in shape)
        count = _element_count(shape)
        index = np.arange(count, dtype=np.uint64)
        offset_word = np.full(count, self.offset % _WORD, dtype=np.uint32)
        zero = np.zeros(count, dtype=np.uint32)
        index_low = (index & _LOW_32).astype(np.uint32)
        index_high = (index >> _SHIFT_32).astype(np.uint32)
        self.offset += 1
        key0 = np.array([self.seed % _WORD], dtype=np.uint32)
        key1 = np.array([self.seed // _WORD], dtype=np.uint32)
        words = _philox_words(offset_word, zero, index_low, index_high, key0, key1, ROUNDS)
        return box_muller_sine(words[0], words[1]).reshape(shape)
