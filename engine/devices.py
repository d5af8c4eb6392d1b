"""Which device and precision the models run in."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceConfig:
    device: torch.device
    dtype: torch.dtype

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type

    @classmethod
    def choose(cls, use_cpu: bool = False, no_half: bool = False) -> "DeviceConfig":
        if use_cpu:
            device = torch.device("cpu")
        elif torch.cuda.is_available():
            device = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
        # Half precision halves memory and is much faster on GPUs; CPUs are slow at it.
        half = device.type in ("cuda", "mps") and not no_half
        return cls(device, torch.float16 if half else torch.float32)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
