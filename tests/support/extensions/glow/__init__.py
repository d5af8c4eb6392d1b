"""A test extension from a "third-party" folder: brightens each finished image."""

from PIL import Image

from engine.extensions import Extension, Field


class Glow(Extension):
    name = "glow"
    title = "Glow"
    order = 5
    fields = (Field("enabled", "Glow", False),
              Field("amount", "Glow amount", 40, kind="slider", minimum=0, maximum=100, step=1))

    def process(self, image: Image.Image, request, options, ctx) -> Image.Image:
        amount = int(options["amount"])
        return image.point(lambda v: min(255, v + amount))

    def infotext(self, request, options):
        return {"Glow": options["amount"]}


extension = Glow()
