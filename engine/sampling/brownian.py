"""The SDE samplers' noise: a Brownian tree per image, seeded with the image's seed, as A1111
draws it (torchsde's BrownianTree), so DPM++ SDE and friends make A1111's pictures."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchsde

# --- Brownian noise for the SDE samplers -----------------------------------------------------


# torchsde's default resolution, which A1111's trees use; torchsde keeps the interval's ends
# rounded to as many decimals as it resolves.
_TREE_TOLERANCE = 1e-6


def _tree_rounded(t) -> float:
    return round(float(t), -int(math.log10(_TREE_TOLERANCE)))


def _ordered(a, b):
    """(low, high, +1) or (high, low, -1)."""
    return (a, b, 1) if a < b else (b, a, -1)


class BrownianNoise:
    """Noise from a Brownian motion over sigma, one torchsde tree per image seed (A1111's noise
    sampler for the SDE samplers): an image's noise depends on its seed only, whatever batch it
    is in, and increments stay consistent however the steps cut the interval. A call gives the
    increment over [sigma, sigma_next] scaled to unit variance."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seeds: Sequence[int]):
        seeds = list(seeds)
        if len(seeds) != x.shape[0]:
            raise ValueError(f"BrownianNoise needs one seed per image: {len(seeds)} seeds, {x.shape[0]} images")
        low, high, self._orientation = _ordered(torch.as_tensor(sigma_min), torch.as_tensor(sigma_max))
        origin = x.new_zeros(x.shape[1:])
        self._trees = [torchsde.BrownianTree(low, origin, high, entropy=seed, tol=_TREE_TOLERANCE) for seed in seeds]
        self._bounds = (_tree_rounded(low), _tree_rounded(high))

    def _clamped(self, t) -> float:
        """t clamped to the tree's interval as torchsde would clamp it, minus its warning: the
        float32 ends of A1111's schedules and sigmas after a log-time round trip fall outside
        the rounded interval by a hair (14.614602088928223 against 14.614602)."""
        lowest, highest = self._bounds
        return min(max(float(t), lowest), highest)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        a, b, orientation = _ordered(t0, t1)
        a, b = self._clamped(a), self._clamped(b)
        increment = torch.stack([tree(a, b) for tree in self._trees]) * (self._orientation * orientation)
        return increment / (t1 - t0).abs().sqrt()
