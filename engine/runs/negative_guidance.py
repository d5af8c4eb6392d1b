"""Negative guidance minimum sigma ("NGMS", the API's `s_min_uncond`): once the noise level is
below it, every other UNet call leaves out the negative prompt and uses the positive prediction
for both halves of the guidance, which then returns the positive prediction unchanged. Late
steps change little, so this saves time at a small cost, as in the web UI the option comes from.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch


def _halve(value: Any, batch: int) -> Any:
    """The positive half of a [negative, positive] batch, through dicts, lists and tuples."""
    if torch.is_tensor(value):
        return value[batch:] if value.dim() > 0 and value.shape[0] == 2 * batch else value
    if isinstance(value, dict):
        return {key: _halve(item, batch) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_halve(item, batch) for item in value)
    return value


def sigma_of(timestep: torch.Tensor | float, alphas_cumprod: torch.Tensor) -> float:
    """The noise level sigma = sqrt((1 - a) / a) at a (possibly fractional) training timestep."""
    t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
    t = min(max(t, 0.0), len(alphas_cumprod) - 1.0)
    low, frac = int(t), t - int(t)
    high = min(low + 1, len(alphas_cumprod) - 1)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return float(sigmas[low] * (1 - frac) + sigmas[high] * frac)


@contextlib.contextmanager
def skipping_negative(unet: torch.nn.Module, s_min_uncond: float, alphas_cumprod: torch.Tensor,
                      guiding: Callable[[], bool], on_skip: Callable[[], None]) -> Iterator[None]:
    """For the block: odd UNet calls (the 2nd, 4th, ...) below `s_min_uncond` run on the positive
    half only. `guiding()`: whether this call's batch is [negative, positive]; `on_skip()` is
    called each time a half is left out (for the infotext)."""
    if s_min_uncond <= 0:
        yield
        return
    calls = {"count": 0, "skipping": None}

    def before(module, args, kwargs):
        index = calls["count"]
        calls["count"] += 1
        calls["skipping"] = None
        sample = args[0] if args else kwargs.get("sample")
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if index % 2 == 0 or not guiding() or sample is None or sample.shape[0] % 2:
            return None
        if sigma_of(timestep, alphas_cumprod) >= s_min_uncond:
            return None
        batch = sample.shape[0] // 2
        calls["skipping"] = batch
        on_skip()
        return _halve(tuple(args), batch), _halve(dict(kwargs), batch)

    def after(module, args, kwargs, output):
        if calls["skipping"] is None:
            return None
        positive = output[0] if isinstance(output, tuple) else output.sample
        both = torch.cat([positive, positive])
        if isinstance(output, tuple):
            return (both, *output[1:])
        output.sample = both
        return output

    handles = [unet.register_forward_pre_hook(before, with_kwargs=True),
               unet.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
