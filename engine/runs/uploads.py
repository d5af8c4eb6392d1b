"""Reading images that users and client programs send: base64 or bytes, checked before decoding.

The size is read from the file's header first, so a decompression bomb is refused before its
pixels are ever unpacked; anything that is not a readable image gets a message naming the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from engine.errors import RequestError

# Beyond this many base64 characters a body is refused before decoding (about 150 MB of image).
MAX_BASE64_CHARS = 200_000_000


def pixel_limit_error(width: int, height: int, limit_megapixels: float, name: str) -> RequestError | None:
    if width * height > limit_megapixels * 1_000_000:
        return RequestError(
            f"{name} is {width}x{height} ({width * height / 1e6:.1f} megapixels); uploads are "
            f"limited to {limit_megapixels:g} megapixels (setting 'upload_max_megapixels'). "
            "Scale the picture down first.", name)
    return None


def check_pixel_limit(image: Image.Image, limit_megapixels: float, name: str) -> None:
    error = pixel_limit_error(image.width, image.height, limit_megapixels, name)
    if error:
        raise error


def decode_base64(text: str, name: str) -> bytes:
    """Bare base64 or a data: URL, as the ecosystem's clients send them."""
    if not isinstance(text, str) or not text.strip():
        raise RequestError(f"{name} is empty: send a base64-encoded image", name)
    if len(text) > MAX_BASE64_CHARS:
        raise RequestError(f"{name} is too large to be an image upload", name)
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text.strip(), validate=False)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"{name} is not valid base64 ({error})", name) from error


def open_image(data: bytes, name: str, limit_megapixels: float) -> Image.Image:
    """The decoded image, or RequestError: empty, not an image, truncated, or too big."""
    if not data:
        raise RequestError(f"{name} is empty (0 bytes)", name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_pixel_limit(image, limit_megapixels, name)
            image.load()
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow refuses such sizes before we see them: far beyond any limit that can be set.
        raise RequestError(
            f"{name} is too large: its header claims more than "
            f"{(Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels; uploads are limited to "
            f"{limit_megapixels:g} megapixels (setting 'upload_max_megapixels')", name) from error
    except UnidentifiedImageError as error:
        raise RequestError(f"{name} is not an image this app can read (PNG, JPEG, WEBP, ...)",
                           name) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise RequestError(f"{name} could not be read: the file is damaged or truncated ({error})",
                           name) from error
    return image


def image_from_base64(text: str, name: str, limit_megapixels: float) -> Image.Image:
    return open_image(decode_base64(text, name), name, limit_megapixels)
