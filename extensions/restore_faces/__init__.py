"""Restore faces: find the faces in each finished picture and restore them, with the built-in
face detailer (the loaded model redraws each face) or GFPGAN / CodeFormer weight files."""

from __future__ import annotations

from engine.extensions import Extension, Field
from engine.postprocess.faces import FACE_DETAILER, RESTORERS


class RestoreFaces(Extension):
    name = "restore_faces"
    title = "Restore faces"
    order = 30  # after hires fix, so the faces of the final picture are the ones restored
    modes = ("txt2img", "img2img")
    fields = (
        Field("enabled", "Restore faces", False),
        # Chosen in Settings (face_restoration_model, face_restoration_strength,
        # code_former_weight); the API may still give them per request.
        Field("restorer", "Face restorer", FACE_DETAILER, kind="dropdown", choices=RESTORERS, in_ui=False),
        Field("strength", "Face detailer denoising strength", 0.4, kind="slider", minimum=0.05,
              maximum=1.0, step=0.05, in_ui=False),
        Field("codeformer_weight", "CodeFormer weight", 0.5, kind="slider", minimum=0.0, maximum=1.0,
              step=0.05, in_ui=False),
    )
    description = ("Finds faces (OpenCV) and restores each: the face detailer redraws it with the "
                   "loaded model; GFPGAN and CodeFormer use their weight files.")

    catalog = None  # the names of what is installed, given at start (attach)

    def attach(self, catalog):
        self.catalog = catalog

    def check(self, options):
        # Only when on: a restorer chosen in Settings but missing must not stop other jobs.
        if self.is_active(options) and options.get("restorer", FACE_DETAILER) != FACE_DETAILER:
            self.catalog.check_face_restorer(options["restorer"])

    def process(self, image, request, options, ctx):
        ctx.save_before("face-restoration", image)
        return ctx.restore_faces(image, options["restorer"], strength=options["strength"],
                                 fidelity=options["codeformer_weight"])

    def infotext(self, request, options):
        return {"Face restoration": options["restorer"]}


extension = RestoreFaces()
