"""A test extension that paints a face over the picture, so restore-faces has one to find."""

from engine.extensions import Extension, Field
from tests.support.face_image import picture_with_a_face


class FacePainter(Extension):
    name = "face_painter"
    order = 1  # before restore faces (30)
    fields = (Field("enabled", "Paint a face", False),)

    def process(self, image, request, options, ctx):
        return picture_with_a_face(*image.size, at=(96, 48))


extension = FacePainter()
