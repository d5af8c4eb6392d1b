"""The fill Outpainting mk2 starts the new area from: noise shaped like the known picture.

The idea (from the g-diffuser project, as the mature UI's Outpainting mk2 uses it): take the
spectrum of the known part of the picture; give the new area noise whose spectrum has that
picture's phases and, raised to `noise_q`, its magnitudes (the fall-off exponent: lower keeps
more fine detail), so the fill carries on the picture's structure and texture instead of being
flat; then give the fill the known part's colour distribution. `colour_variation` blends the
starting noise between grey (0) and fully coloured (1).

Written here from that description with numpy: orthonormal 2-D FFTs, the noise first softened
by a low-pass window, the result matched channel by channel to the known pixels' histogram.
Deterministic: the noise comes from the generator it is given."""

from __future__ import annotations

import numpy as np

KNOWN, NEW = 1e-3, 1e-6  # mask below KNOWN: reference pixels; above NEW: pixels to fill


def _spectrum(planes: np.ndarray) -> np.ndarray:
    """Each channel's 2-D FFT (orthonormal), the zero frequency moved to the centre."""
    return np.fft.fftshift(np.fft.fft2(planes, axes=(0, 1), norm="ortho"), axes=(0, 1))


def _planes(spectrum: np.ndarray) -> np.ndarray:
    """The real pictures of centred spectra (the inverse of _spectrum)."""
    return np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(0, 1)), axes=(0, 1), norm="ortho").real


def low_pass(height: int, width: int) -> np.ndarray:
    """A window over a centred spectrum that falls off as 1 / ((1 + x^2)(1 + y^2)), x and y
    running from -1 to 1 across the shorter side (further along the longer one)."""
    short = min(height, width)
    ys = (np.arange(height) / height * 2 - 1) * (height / short)
    xs = (np.arange(width) / width * 2 - 1) * (width / short)
    return 1.0 / np.outer(1 + ys ** 2, 1 + xs ** 2)


def match_histogram(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`values` (N x C) with each channel's distribution mapped onto `reference`'s (M x C): the
    k-th smallest value becomes the reference value at the same quantile."""
    matched = np.empty_like(values)
    count, ref_count = len(values), len(reference)
    quantiles = (np.arange(count) + 0.5) / count
    ref_quantiles = (np.arange(ref_count) + 0.5) / ref_count
    for channel in range(values.shape[1]):
        order = np.argsort(values[:, channel], kind="stable")
        matched[order, channel] = np.interp(quantiles, ref_quantiles, np.sort(reference[:, channel]))
    return matched


def matched_noise(image: np.ndarray, mask: np.ndarray, noise_q: float, colour_variation: float,
                  rng: np.random.Generator) -> np.ndarray:
    """`image` (H x W x 3, 0..1) with the area `mask` marks (H x W, 1 = new) filled with matched
    noise; the rest is kept. Returns H x W x 3 in 0..1."""
    image = image.astype(np.float64)
    mask = np.clip(mask.astype(np.float64), 0.0, 1.0)
    height, width, channels = image.shape
    new, known = mask > NEW, mask < KNOWN
    weight = mask[..., None]
    reference = image[known]
    if not new.any():
        return image.copy()
    if len(reference) == 0:  # nothing known to match: plain noise
        return np.clip(image * (1 - weight) + rng.random(image.shape) * weight, 0.0, 1.0)

    # The known part, scaled to 1 at its brightest, the rest its average colour (a hole of
    # black would put a hard edge into the spectrum).
    windowed = image * (1 - weight)
    peak = windowed.max()
    if peak > 0:
        windowed = windowed / peak
    windowed += reference.mean(axis=0) * weight
    source = _spectrum(windowed)
    magnitude = np.abs(source)
    phase = np.divide(source, magnitude, out=np.ones_like(source), where=magnitude > 0)

    # Starting noise, between grey and coloured, with its fine detail softened.
    noise = rng.random((height, width, channels))
    grey = noise.mean(axis=2, keepdims=True)
    noise = noise * colour_variation + grey * (1 - colour_variation)
    noise = _planes(_spectrum(noise) * low_pass(height, width)[..., None])

    # The noise's power with the picture's magnitudes (to noise_q) and phases.
    shaped = _planes(np.abs(_spectrum(noise)) ** 2 * magnitude ** noise_q * phase)
    shaped -= shaped.min()
    top = shaped.max()
    if top > 0:
        shaped /= top
    shaped[new] = match_histogram(shaped[new], reference)
    return np.clip(image * (1 - weight) + shaped * weight, 0.0, 1.0)
