"""Which device and precision the models run in."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceConfig:
    device: torch.device
    dtype: torch.dtype
    # The VAE's precision when it differs from the model's (--no-half-vae, --precision full).
    vae_dtype: torch.dtype | None = None
    # --precision half: the VAE decodes in 16-bit even where its config asks for 32.
    half_vae_always: bool = False
    # --upcast-sampling: a 16-bit UNet, the sampler's latents in 32-bit.
    upcast_sampling: bool = False

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type

    @property
    def label(self) -> str:
        """How a list of workers shows it: "NVIDIA H100 80GB HBM3 (cuda:0)", "cpu"."""
        return f"{self.name} ({self.device})" if self.device.type == "cuda" else str(self.device)

    @property
    def vae(self) -> torch.dtype:
        return self.vae_dtype or self.dtype

    @classmethod
    def choose(cls, use_cpu: bool = False, no_half: bool = False, no_half_vae: bool = False,
               precision: str = "autocast", device_id: str | int | None = None,
               upcast_sampling: bool = False) -> "DeviceConfig":
        """The device and precisions the start flags ask for (the web UI's flag names:
        --use-cpu, --no-half, --no-half-vae, --precision, --device-id, --upcast-sampling)."""
        if use_cpu:
            device = torch.device("cpu")
        elif torch.cuda.is_available():
            device = torch.device("cuda", _cuda_index(device_id))
            torch.cuda.set_device(device)  # memory figures and library defaults follow it
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
        # Half precision halves memory and is much faster on GPUs; CPUs are slow at it.
        return cls(device, **precisions(device.type in ("cuda", "mps"), no_half=no_half,
                                        no_half_vae=no_half_vae, precision=precision,
                                        upcast_sampling=upcast_sampling))


def precisions(half_capable: bool, no_half: bool = False, no_half_vae: bool = False,
               precision: str = "autocast", upcast_sampling: bool = False) -> dict:
    """The DeviceConfig precisions the flags ask for on a device that is (or is not) fast in
    16-bit: --no-half and --precision full keep everything in 32-bit; --no-half-vae the VAE;
    --precision half never upcasts the VAE; --upcast-sampling needs a 16-bit UNet to mean anything."""
    half = half_capable and not no_half and precision != "full"
    vae_dtype = torch.float32 if half and (no_half_vae or precision == "full") else None
    return {"dtype": torch.float16 if half else torch.float32, "vae_dtype": vae_dtype,
            "half_vae_always": half and precision == "half" and vae_dtype is None,
            "upcast_sampling": half and upcast_sampling}


def _cuda_index(device_id: str | int | None) -> int:
    if device_id is None or device_id == "":
        return torch.cuda.current_device()
    index, count = int(device_id), torch.cuda.device_count()
    if not 0 <= index < count:
        raise ValueError(f"--device-id {index}: this machine has {count} CUDA device(s), numbered "
                         f"0 to {count - 1}")
    return index


def device_memory(device: torch.device) -> int | None:
    """The total memory of a CUDA device in bytes (None for the CPU and other devices)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(device.index if device.index is not None else
                                            torch.cuda.current_device()).total_memory


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


UPCAST = "sd_studio_upcast_sampling"


def upcast_sampling(unet: torch.nn.Module) -> None:
    """--upcast-sampling: the 16-bit UNet takes 32-bit latents (cast on the way in) and hands its
    prediction back in 32-bit, so the sampler's arithmetic between steps runs in full precision."""
    if getattr(unet, UPCAST, False) or unet.dtype == torch.float32:
        return

    def inputs_down(module, args, kwargs):
        cast = lambda value: value.to(module.dtype) if torch.is_tensor(value) and value.is_floating_point() \
            else value  # noqa: E731
        return tuple(cast(arg) for arg in args), {key: cast(value) for key, value in kwargs.items()}

    def output_up(module, args, kwargs, output):
        if isinstance(output, tuple):
            return (output[0].float(), *output[1:])
        if hasattr(output, "sample"):
            output.sample = output.sample.float()
        return output

    unet.register_forward_pre_hook(inputs_down, with_kwargs=True)
    unet.register_forward_hook(output_up, with_kwargs=True)
    setattr(unet, UPCAST, True)


def latent_dtype(unet: torch.nn.Module) -> torch.dtype:
    """The precision the sampler's latents are kept in for this UNet."""
    return torch.float32 if getattr(unet, UPCAST, False) else unet.dtype
