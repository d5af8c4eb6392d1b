"""ControlNet preprocessors that need weights (engine/controlnet/annotators.py): listed with the
reason when their library or files are missing, found flat or in the ecosystem's folders, and run
through controlnet_aux (a stand-in with its calling convention here, where it cannot import) or
transformers for segmentation."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.controlnet import annotators, preprocessors
from engine.errors import RequestError
from tests.test_controlnet_preprocessors import NEEDS_WEIGHTS, WEIGHT_FREE, picture

AUX_INSTALLED = importlib.util.find_spec("controlnet_aux") is not None


@pytest.mark.parametrize("name", NEEDS_WEIGHTS)
def test_weight_needing_preprocessors_are_unavailable_with_the_reason(tmp_path, name):
    table = {entry[0]: entry[1:] for entry in preprocessors.availability(tmp_path / "models")}
    assert list(table) == list(preprocessors.PREPROCESSORS)
    assert all(table[free] == (True, "") for free in WEIGHT_FREE)
    available, reason = table[name]
    assert not available
    assert str(tmp_path / "models" / "ControlNet" / "annotators") in reason
    if name != "seg_ofade20k" and not AUX_INSTALLED:
        assert "controlnet_aux library is not installed" in reason
    with pytest.raises(RequestError) as error:
        preprocessors.run(name, picture(), 128, models_dir=tmp_path / "models")
    assert error.value.field == "module"
    assert error.value.message == f"Preprocessor '{name}' is not available: {reason}"


def test_weight_files_are_found_flat_or_in_the_ecosystems_folders(tmp_path):
    annotators = tmp_path / "models" / "ControlNet" / "annotators"
    (annotators / "openpose").mkdir(parents=True)
    (annotators / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"")
    for name in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"):
        (annotators / "openpose" / name).write_bytes(b"")
    for models_dir in (tmp_path / "models", tmp_path / "models" / "ControlNet", annotators):
        table = {entry[0]: entry[2] for entry in preprocessors.availability(models_dir)}
        for name in ("depth_midas", "openpose", "openpose_full"):
            assert "missing weights" not in table[name]
        assert "missing weights" in table["depth_zoe"] and "ZoeD_M12_N.pt" in table["depth_zoe"]
        assert "scannet.pt" in table["normal_bae"]


def test_the_singular_annotator_folder_is_read_when_it_is_the_one_there(tmp_path):
    singular = tmp_path / "models" / "ControlNet" / "annotator"
    (singular / "midas").mkdir(parents=True)
    (singular / "midas" / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"")
    assert preprocessors.annotators_dir(tmp_path / "models") == singular
    table = {entry[0]: entry[2] for entry in preprocessors.availability(tmp_path / "models")}
    assert "missing weights" not in table["depth_midas"] and str(singular) in table["depth_zoe"]
    (tmp_path / "models" / "ControlNet" / "annotators").mkdir()   # both there: the plural one
    assert preprocessors.annotators_dir(tmp_path / "models").name == "annotators"


def test_segmentation_runs_an_ade20k_model_folder(tmp_path):
    # A tiny random UperNet stands in for a downloaded one: the map must use ADE20K's colours.
    import torch
    from transformers import ConvNextConfig, UperNetConfig
    from transformers import UperNetForSemanticSegmentation as UperNet

    torch.manual_seed(0)
    backbone = ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, use_auxiliary_head=False, num_labels=150)
    UperNet(config).save_pretrained(tmp_path / "ControlNet" / "annotators" / "seg_ade20k")
    assert dict((n, a) for n, a, _ in preprocessors.availability(tmp_path))["seg_ofade20k"]
    loaded = annotators.Annotators("cpu")
    result = preprocessors.run("seg_ufade20k", picture(), 100, models_dir=tmp_path, annotators=loaded)
    [(model, *_)] = loaded._loaded.values()
    assert next(model.parameters()).device.type == "cpu"
    again = preprocessors.run("seg_ufade20k", picture(), 100, models_dir=tmp_path, annotators=loaded)
    assert [entry[0] for entry in loaded._loaded.values()] == [model]  # kept, not read again
    assert np.array_equal(np.asarray(again), np.asarray(result))
    loaded.unload()
    assert not loaded._loaded
    assert result.size == (150, 100) and result.mode == "RGB"
    palette = {tuple(colour) for colour in annotators.ADE20K_PALETTE.tolist()}
    assert len(palette) == 149  # 150 classes; two share a grey in MMSegmentation's table
    assert annotators.ADE20K_PALETTE[[0, 2, 12, 149]].tolist() == [  # wall, sky, person, flag
        [120, 120, 120], [6, 230, 230], [150, 5, 61], [92, 0, 255]]
    assert {tuple(colour) for colour in np.asarray(result).reshape(-1, 3).tolist()} <= palette


def test_the_default_models_folder_is_the_apps():
    assert preprocessors.annotators_dir(None) == Path(preprocessors.__file__).resolve().parents[2] / \
        "models" / "ControlNet" / "annotators"


FAKE_AUX = """
import os
import numpy as np

calls = []


class MidasDetector:
    @classmethod
    def from_pretrained(cls, folder, model_type="dpt_hybrid", filename=None):
        assert os.path.isfile(os.path.join(folder, filename)), filename
        calls.append(("from_pretrained", os.path.join(folder, filename)))
        return cls()

    def to(self, device):
        calls.append(("to", device))
        return self

    def __call__(self, image, detect_resolution=512, image_resolution=512, output_type=None):
        calls.append(("call", image.shape, detect_resolution, image_resolution, output_type))
        side = -(-image_resolution // 64) * 64  # like the library: sizes rounded up to 64
        height, width = image.shape[:2]
        shape = (side, round(width * side / height)) if height <= width else (round(height * side / width), side)
        return np.broadcast_to(np.linspace(0, 255, shape[1]).astype(np.uint8), shape).copy()
"""


def test_depth_runs_controlnet_aux_on_the_local_files(tmp_path, monkeypatch):
    # A stand-in for the library (absent here) with its calling convention; what is checked is
    # the glue: the files found, the arguments passed, the map brought back to our size.
    packages = tmp_path / "site"
    for module in ("controlnet_aux", "torchvision", "timm", "einops", "skimage"):
        (packages / module).mkdir(parents=True)
        (packages / module / "__init__.py").write_text(FAKE_AUX if module == "controlnet_aux" else "")
    (tmp_path / "models" / "ControlNet" / "annotators" / "midas").mkdir(parents=True)
    weights = tmp_path / "models" / "ControlNet" / "annotators" / "midas" / "dpt_hybrid-midas-501f0c75.pt"
    weights.write_bytes(b"")
    monkeypatch.syspath_prepend(str(packages))
    importlib.invalidate_caches()
    try:
        table = {name: (available, reason) for name, available, reason in
                 preprocessors.availability(tmp_path / "models")}
        assert table["depth_midas"] == (True, "")
        assert not table["depth_zoe"][0] and table["depth_zoe"][1].startswith("missing weights in ")
        loaded = annotators.Annotators("the-apps-device")
        depth = preprocessors.run("depth", picture(), 100, models_dir=tmp_path / "models", annotators=loaded)
        preprocessors.run("depth_midas", picture(), 100, models_dir=tmp_path / "models", annotators=loaded)
        import controlnet_aux
        assert controlnet_aux.calls[0] == ("from_pretrained", str(weights))
        assert controlnet_aux.calls[1] == ("to", "the-apps-device")
        assert [call[0] for call in controlnet_aux.calls] == ["from_pretrained", "to", "call", "call"]  # kept
        assert controlnet_aux.calls[2][1:] == ((100, 150, 3), 100, 100, "np")
        # Another owner (another app in the same process) loads its own.
        preprocessors.run("depth_midas", picture(), 100, models_dir=tmp_path / "models",
                          annotators=annotators.Annotators("cpu"))
        assert [call[0] for call in controlnet_aux.calls[4:]] == ["from_pretrained", "to", "call"]
        assert controlnet_aux.calls[5] == ("to", "cpu")
        loaded.unload()
        assert not loaded._loaded
    finally:
        for module in ("controlnet_aux", "torchvision", "timm", "einops", "skimage"):
            sys.modules.pop(module, None)
    assert depth.size == (150, 100) and depth.mode == "RGB"
    values = np.asarray(depth)
    assert values[50, 0, 0] < 10 and values[50, -1, 0] > 245


FAKE_EDGE_AUX = """
import os
import numpy as np

calls = []


class _Detector:
    @classmethod
    def from_pretrained(cls, folder, filename=None, **more):
        for name in (filename, *more.values()):
            assert os.path.isfile(os.path.join(folder, name)), name
        calls.append((cls.__name__, "from_pretrained", filename, tuple(sorted(more.items()))))
        return cls()

    def to(self, device):
        return self

    def __call__(self, image, detect_resolution=512, image_resolution=512, output_type=None, **options):
        calls.append((type(self).__name__, "call", tuple(sorted(options.items()))))
        return np.full(image.shape[:2], 200, dtype=np.uint8)


class HEDdetector(_Detector):
    pass


class PidiNetDetector(_Detector):
    pass


class LineartDetector(_Detector):
    pass


class MLSDdetector(_Detector):
    pass


class OpenposeDetector(_Detector):
    pass
"""


def test_hed_pidinet_lineart_and_mlsd_run_their_networks_with_the_extensions_options(tmp_path, monkeypatch):
    """The glue to controlnet_aux (absent here, so a stand-in with its calling convention): the
    weight files found in the ecosystem's sub-folders, one detector kept per network for its
    variants, and the options each module means (safe, scribble, coarse, M-LSD's thresholds)."""
    packages = tmp_path / "site"
    for module in ("controlnet_aux", "torchvision", "timm", "einops", "skimage"):
        (packages / module).mkdir(parents=True)
        (packages / module / "__init__.py").write_text(FAKE_EDGE_AUX if module == "controlnet_aux" else "")
    folder = tmp_path / "models" / "ControlNet" / "annotators"
    for sub, name in (("hed", "ControlNetHED.pth"), ("pidinet", "table5_pidinet.pth"), ("lineart", "sk_model.pth"),
                      ("lineart", "sk_model2.pth"), ("mlsd", "mlsd_large_512_fp32.pth"),
                      ("openpose", "body_pose_model.pth"), ("openpose", "hand_pose_model.pth"),
                      ("openpose", "facenet.pth")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / name).write_bytes(b"")
    monkeypatch.syspath_prepend(str(packages))
    importlib.invalidate_caches()
    try:
        loaded = annotators.Annotators("cpu")

        def run(name, **fields):
            return preprocessors.run(name, picture(), 64, models_dir=tmp_path / "models", annotators=loaded, **fields)

        for name in ("softedge_hed", "softedge_hedsafe", "scribble_hed", "scribble_pidinet", "lineart_coarse"):
            assert np.asarray(run(name)).max() == 200
        run("mlsd", threshold_a=0.3, threshold_b=2.5)
        for name in ("t2ia_sketch_pidi", "openpose_hand", "openpose_face", "openpose_faceonly"):
            run(name)
        import controlnet_aux
        calls = [call for call in controlnet_aux.calls]
        built = [call for call in calls if call[1] == "from_pretrained"]
        assert [call[0] for call in built] == ["HEDdetector", "PidiNetDetector", "LineartDetector", "MLSDdetector",
                                               "OpenposeDetector"]   # one per network, kept for its variants
        assert built[2][2:] == ("lineart/sk_model.pth", (("coarse_filename", "lineart/sk_model2.pth"),))
        options = [(call[0], dict(call[2])) for call in calls if call[1] == "call"]
        assert options == [("HEDdetector", {}), ("HEDdetector", {"safe": True}), ("HEDdetector", {"scribble": True}),
                           ("PidiNetDetector", {"safe": True, "scribble": True}), ("LineartDetector", {"coarse": True}),
                           ("MLSDdetector", {"thr_v": 0.3, "thr_d": 2.5}), ("PidiNetDetector", {"apply_filter": True}),
                           ("OpenposeDetector", {"include_body": True, "include_hand": True, "include_face": False}),
                           ("OpenposeDetector", {"include_body": True, "include_hand": False, "include_face": True}),
                           ("OpenposeDetector", {"include_body": False, "include_hand": False, "include_face": True})]
    finally:
        for module in ("controlnet_aux", "torchvision", "timm", "einops", "skimage"):
            sys.modules.pop(module, None)
