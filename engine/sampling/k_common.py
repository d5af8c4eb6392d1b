"""What the sigma-based sampler functions share: their call types, the per-image noise level and
the ancestral split of a step (see engine/sampling/k_samplers.py for the conventions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[Any, Any], torch.Tensor]
Callback = Callable[[dict], None]


def per_image(x: torch.Tensor, sigma) -> torch.Tensor:
    """The noise level repeated for each image of the batch, as the model expects it."""
    return sigma * x.new_ones([x.shape[0]])


def ancestral_split(sigma, sigma_next, eta: float = 1.0):
    """(sigma_down, sigma_up) of an ancestral step from sigma to sigma_next: move
    deterministically down to sigma_down, then add fresh noise of standard deviation sigma_up,
    so that sigma_down^2 + sigma_up^2 = sigma_next^2. eta scales the fresh share (0: none)."""
    if not eta:
        return sigma_next, 0.0
    variance_share = sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2
    sigma_up = min(sigma_next, eta * variance_share ** 0.5)
    sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up
