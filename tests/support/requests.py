"""Requests in tests, changed the way tests have long written them: flat, with the img2img part's
fields (init_images, mask, denoising_strength...) among the request's own."""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.request import GenerationRequest, Img2ImgOptions

IMG2IMG_FIELDS = frozenset(field.name for field in dataclasses.fields(Img2ImgOptions))


def with_fields(request: GenerationRequest, **fields: Any) -> GenerationRequest:
    """`request` with `fields` changed: those of the img2img part on its part (which makes the
    request an img2img one, with a default part if it had none), the others on the request."""
    part = {name: value for name, value in fields.items() if name in IMG2IMG_FIELDS}
    rest = {name: value for name, value in fields.items() if name not in IMG2IMG_FIELDS}
    if part:
        request = request.with_img2img(**part)
    return request.replace(**rest)


def img2img_request(**fields: Any) -> GenerationRequest:
    """A new img2img request (`GenerationRequest(mode="img2img", ...)`), the img2img part's
    fields among `fields`."""
    return with_fields(GenerationRequest(mode="img2img", img2img=Img2ImgOptions()), **fields)
