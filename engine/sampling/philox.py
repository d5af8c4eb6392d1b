"""The "NV" noise source: torch's CUDA randn reproduced on the CPU, so that a seed gives the
same noise on any machine. torch draws normal numbers on CUDA from Philox4x32-10 (Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", SC'11): one counter per element (the generator's
offset, 0, the element's index, 0), the 64-bit seed as the key, and the first two 32-bit words of
the output turned into one normal number by the Box-Muller transform. Vectorised with numpy."""

from __future__ import annotations

import numpy as np

# Philox4x32 multipliers and Weyl key increments (the published constants).
_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_STEPS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
ROUNDS = 10
# 2^-32 and 2pi x 2^-32 as the CUDA kernels hold them, in float32.
_UNIT = np.float32(2.3283064e-10)
_UNIT_2PI = np.float32(2.3283064e-10 * 6.2831855)


def _multiply_split(a: np.ndarray, multiplier: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 32-bit halves of the 64-bit product of each word with the multiplier."""
    product = a.astype(np.uint64) * multiplier
    return (product >> np.uint64(32)).astype(np.uint32), (product & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """Philox4x32 of each column: counter (4, n) and key (2, n) of uint32; returns (4, n)."""
    c = [counter[i].copy() for i in range(4)]
    k0, k1 = key[0].copy(), key[1].copy()
    with np.errstate(over="ignore"):
        for round_index in range(rounds):
            if round_index:
                k0 = k0 + _KEY_STEPS[0]
                k1 = k1 + _KEY_STEPS[1]
            high0, low0 = _multiply_split(c[0], _MULTIPLIERS[0])
            high1, low1 = _multiply_split(c[2], _MULTIPLIERS[1])
            c = [high1 ^ c[1] ^ k0, low1, high0 ^ c[3] ^ k1, low0]
    return np.stack(c)


def box_muller(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One normal number from two uniform 32-bit words (the CUDA kernel's arithmetic: numpy
    carries it in float64, then float32)."""
    u = first * _UNIT + _UNIT / 2
    v = second * _UNIT_2PI + _UNIT_2PI / 2
    radius = np.sqrt(-2.0 * np.log(u))
    return (radius * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """A seeded stream of normal numbers as torch.randn draws them with a CUDA generator: each
    call to randn advances the offset by one."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        counter = np.zeros((4, count), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(count, dtype=np.uint32)
        self.offset += 1
        seed = np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF)
        key = np.empty((2, count), dtype=np.uint32)
        key[0] = np.uint32(seed & np.uint64(0xFFFFFFFF))
        key[1] = np.uint32(seed >> np.uint64(32))
        words = philox4x32(counter, key)
        return box_muller(words[0], words[1]).reshape(tuple(shape))
