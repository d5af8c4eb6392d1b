"""Restore faces: find the faces in each finished picture and redraw them in more detail."""

from __future__ import annotations

from pathlib import Path

from engine.extensions import Extension, Field
from engine.faces import FACE_DETAILER, RESTORERS, check_restorer, detail_faces


class RestoreFaces(Extension):
    name = "restore_faces"
    title = "Restore faces"
    order = 30  # after hires fix, so the faces of the final picture are the ones restored
    modes = ("txt2img", "img2img")
    fields = (
        Field("enabled", "Restore faces", False),
        # Chosen in Settings (face_restoration_model, face_restoration_strength); the API may
        # still give them per request.
        Field("restorer", "Face restorer", FACE_DETAILER, kind="dropdown", choices=RESTORERS, in_ui=False),
        Field("strength", "Face detailer denoising strength", 0.4, kind="slider", minimum=0.05,
              maximum=1.0, step=0.05, in_ui=False),
    )
    description = "Finds faces (OpenCV) and redraws each with the loaded model, blended back softly."

    def check(self, options):
        if options.get("restorer", FACE_DETAILER) != FACE_DETAILER:
            check_restorer(options["restorer"], Path("models"))

    def process(self, image, request, options, ctx):
        return detail_faces(image, request.replace(steps=max(request.steps, 4)), options["strength"],
                            ctx.second_pass)

    def infotext(self, request, options):
        return {"Face restoration": options["restorer"]}


extension = RestoreFaces()
