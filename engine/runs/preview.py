"""Live previews of the image being made, by the `show_progress_type` setting's method.

"Approx cheap": latents to RGB by a fixed linear map, no VAE, no extra model. The four latent
channels of the SD VAEs are close to a linear function of colour; the coefficients below are
least-squares fits published by the community for the SD 1.x/2.x and SDXL latent spaces. An 8x
smaller image is plenty for a preview.
"Full": the latents decoded by the job's VAE, as the final image will be: exact and full size,
but a VAE decode per preview.
"TAESD": a tiny autoencoder's decoder (engine/networks/preview_decoders.py), full size and close
to the VAE's colours for a fraction of its cost. "Approx NN": the web UI's small convolutional
approximation, a quarter of the size. Their files are found or fetched by
engine/models/preview_models.py; until one is there, a job's previews are "Approx cheap".
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from engine.job_results import FULL
from engine.models.preview_models import DECODER_METHODS, PreviewDecoder, PreviewModels
from engine.networks.vae import decode

_SD_FACTORS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173),
               (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
_SD_BIAS = (0.0, 0.0, 0.0)
_SDXL_FACTORS = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                 (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)


def _rgb_pixels(latents: torch.Tensor, family: str) -> torch.Tensor:
    """(batch, H/8, W/8, 3) uint8 on the latents' device."""
    factors, bias = (_SDXL_FACTORS, _SDXL_BIAS) if family == "sdxl" else (_SD_FACTORS, _SD_BIAS)
    weight = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    offset = torch.tensor(bias, dtype=torch.float32, device=latents.device)
    return _to_uint8(torch.einsum("bchw,cr->bhwr", latents.float(), weight) + offset)


def _to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """Channels-last pixels in [-1, 1] to uint8."""
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def decoded_pixels(decoder: PreviewDecoder, latents: torch.Tensor) -> torch.Tensor:
    """(batch, H, W, 3) uint8 from a preview decoder, on the decoder's device."""
    return _to_uint8(decoder(latents).permute(0, 2, 3, 1))


@torch.no_grad()
def latents_to_rgb(latents: torch.Tensor, family: str) -> list[Image.Image]:
    """One small RGB image per latent in the batch."""
    pixels = _rgb_pixels(latents, family).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(image)) for image in pixels]


class PendingPreview:
    """A cheap preview on its way from the GPU: the copy is queued behind the step that made
    the latents, and whoever shows the preview (a UI or API poll, on its own thread) waits for
    it, never the sampling loop, which a plain .cpu() would stop until the GPU caught up."""

    def __init__(self, latents: torch.Tensor, family: str, pixels: torch.Tensor | None = None):
        """The cheap preview of `latents`, or the given (H, W, 3) uint8 `pixels` on the GPU."""
        pixels = _rgb_pixels(latents[:1], family)[0] if pixels is None else pixels
        self._host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
        self._host.copy_(pixels, non_blocking=True)
        self._ready = torch.cuda.Event()
        self._ready.record()

    def __call__(self) -> Image.Image:
        self._ready.synchronize()
        return Image.fromarray(self._host.numpy())


class Previewer:
    """How one run makes its previews: the method the settings name, with its decoder for TAESD
    and Approx NN (None: that decoder is not there, and the previews are Approx cheap)."""

    def __init__(self, method: str, pipe, family: str, decoder: PreviewDecoder | None = None):
        self.method, self.pipe, self.family, self.decoder = method, pipe, family, decoder

    @classmethod
    def for_run(cls, method: str, pipe, family: str, models: PreviewModels,
                device: torch.device, dtype: torch.dtype) -> tuple["Previewer", str | None]:
        """The run's previewer, and why it cannot use the method asked for (the job's warning)."""
        if method not in DECODER_METHODS:
            return cls(method, pipe, family), None
        decoder, note = models.decoder(method, family, device, dtype)
        return cls(method, pipe, family, decoder), note

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor):
        """The preview of the first latent in the batch: an image, or on a GPU (except for
        Full) a PendingPreview that Job.preview turns into the image."""
        if self.decoder is None:  # Full, Approx cheap, or a decoder that is not there
            return preview_image(self.method, self.pipe, latents, self.family)
        pixels = decoded_pixels(self.decoder, latents[:1])[0]
        if pixels.device.type == "cuda":
            return PendingPreview(latents, self.family, pixels=pixels)
        return Image.fromarray(np.ascontiguousarray(pixels.cpu().numpy()))


@torch.no_grad()
def preview_image(method: str, pipe, latents: torch.Tensor, family: str):
    """The preview of the first latent in the batch by Full or Approx cheap (any other method
    without its decoder): an image, or on a GPU for the cheap one a PendingPreview (Job.preview
    turns it into the image)."""
    if method == FULL:
        images = decode(pipe.vae, latents[:1])
        return pipe.image_processor.postprocess(images, output_type="pil")[0]
    if latents.device.type == "cuda":
        return PendingPreview(latents, family)
    return latents_to_rgb(latents[:1], family)[0]
