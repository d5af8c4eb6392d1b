"""Restore faces: detection, the built-in face detailer, and the extension in a job."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.postprocess import faces
from engine.runs.generation import GenerationRun
from engine.runs.image_context import ImageContext
from engine.job_results import OutputPolicy
from engine.jobs import Job
from engine.models.model_catalogue import ModelNotDownloaded
from engine.request import GenerationRequest
from tests.support.face_image import picture_with_a_face

BASE = GenerationRequest(prompt="a face", steps=4, width=64, height=64, sampler_name="Euler", seed=8,
                         save_images=False, save_grid=False)


def test_the_detector_finds_the_drawn_face_and_nothing_in_a_plain_picture():
    [box] = faces.detect_faces(picture_with_a_face())
    x1, y1, x2, y2 = box
    assert 140 <= x1 <= 175 and 50 <= y1 <= 85 and 250 <= x2 <= 290 and 160 <= y2 <= 200
    assert faces.detect_faces(Image.linear_gradient("L").resize((320, 240)).convert("RGB")) == []



def test_the_face_library_keeps_its_own_detector(tmp_path):
    # The cascade is kept by the library that owns the detector, not by a module-wide cache.
    from engine.postprocess.face_models import FaceModelLibrary

    library, other = FaceModelLibrary(tmp_path), FaceModelLibrary(tmp_path)
    assert library.detector is not other.detector and library.detector._cascade is None
    picture = picture_with_a_face()
    assert faces.detect_faces(picture, detector=library.detector) == faces.detect_faces(picture)
    kept = library.detector._cascade
    assert kept is not None and other.detector._cascade is None
    faces.detect_faces(picture, detector=library.detector)
    assert library.detector._cascade is kept

def _second_pass(engine):
    run = GenerationRun(Job(lambda job: None), BASE, engine.models.require(), OutputPolicy(), engine.addons)
    return ImageContext(run, BASE.seed, 0).second_pass


def test_the_face_detailer_changes_only_the_face_region(engine):
    picture = picture_with_a_face()
    restored = faces.detail_faces(picture, BASE, 0.6, _second_pass(engine))
    assert restored.size == picture.size
    changed = np.abs(np.asarray(restored, dtype=np.int16) - np.asarray(picture, dtype=np.int16)).max(-1) > 2
    [box] = faces.detect_faces(picture)
    left, top, right, bottom = faces._padded_square(box, picture.size)
    outside = np.ones_like(changed)
    outside[top:bottom, left:right] = False
    assert not changed[outside].any(), "nothing outside the face's box changes"
    x1, y1, x2, y2 = box
    assert changed[y1:y2, x1:x2].mean() > 0.3, "the face itself is redrawn"


def test_a_picture_without_faces_comes_back_unchanged(engine):
    plain = Image.linear_gradient("L").resize((160, 120)).convert("RGB")
    assert faces.detail_faces(plain, BASE, 0.6, _second_pass(engine)).tobytes() == plain.tobytes()


def engine_with_face_painter(engine, data_dir):
    """The session engine's model and queue, with add-ons from `data_dir` plus the face painter."""
    from engine.addons import AddOns
    from engine.engine import Engine
    from engine.files import HashCache
    shutil.copytree(Path(__file__).parent / "support" / "extensions" / "face_painter",
                    data_dir / "extensions" / "face_painter")
    return Engine(engine.models, engine.writer, engine.settings,
                  AddOns.in_data_dir(data_dir, HashCache(data_dir / "cache.json")), queue=engine.queue)


def test_restore_faces_runs_after_the_picture_is_made_and_says_so(engine, tmp_path):
    with_painter = engine_with_face_painter(engine, tmp_path)
    request = BASE.replace(width=320, height=256, extensions={"face_painter": {"enabled": True}})
    painted = with_painter.generate(request).images[0]
    restored = with_painter.generate(request.replace(
        extensions={"face_painter": {"enabled": True}, "restore_faces": {"enabled": True}}))
    assert "Face restoration: Face detailer" in restored.infotexts[0]
    changed = np.abs(np.asarray(restored.images[0], dtype=np.int16) - np.asarray(painted, dtype=np.int16)).max(-1) > 2
    [box] = faces.detect_faces(painted)
    left, top, right, bottom = faces._padded_square(box, painted.size)
    assert changed[top:bottom, left:right].any() and not changed[:, :left].any() and not changed[:, right:].any()


def test_unavailable_restorers_are_refused_with_the_reason(engine):
    with pytest.raises(ModelNotDownloaded, match="'GFPGAN' needs GFPGANv1.4.pth .* in models/GFPGAN") as refused:
        engine.submit(BASE.replace(extensions={"restore_faces": {"enabled": True, "restorer": "GFPGAN"}}))
    assert [entry.name for entry in refused.value.entries] == ["GFPGAN"]
    listed = {r.name: r for r in faces.restorers(engine.addons.faces)}
    assert listed["Face detailer"].available and not listed["CodeFormer"].available
    # Chosen but switched off, a missing restorer stops nothing.
    engine.complete(BASE.replace(extensions={"restore_faces": {"enabled": False, "restorer": "GFPGAN"}}))


def test_extras_restores_faces_only_where_they_are(engine):
    from engine.postprocess.extras import ExtrasRequest
    picture = picture_with_a_face()
    result = engine.extras(ExtrasRequest(picture, upscaler="None", scale=1, face_detailer_visibility=1.0),
                           save=False).outcome()
    changed = np.abs(np.asarray(result.image, dtype=np.int16) - np.asarray(picture, dtype=np.int16)).max(-1) > 2
    [box] = faces.detect_faces(picture)
    left, top, right, bottom = faces._padded_square(box, picture.size)
    assert changed[top:bottom, left:right].any() and not changed[:, :left].any()
    assert "Face restoration: Face detailer" in result.extras


def test_the_restorer_and_strength_come_from_the_settings(engine):
    before = engine.settings["face_restoration_strength"]
    engine.settings.update({"face_restoration_strength": 0.25})
    try:
        request = engine.complete(BASE.replace(extensions={"restore_faces": {"enabled": True}}))
        assert request.extensions["restore_faces"] == {"enabled": True, "restorer": "Face detailer",
                                                       "strength": 0.25, "codeformer_weight": 0.5}
        given = engine.complete(BASE.replace(extensions={"restore_faces": {"enabled": True, "strength": 0.7}}))
        assert given.extensions["restore_faces"]["strength"] == 0.7
    finally:
        engine.settings.update({"face_restoration_strength": before})
