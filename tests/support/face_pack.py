"""A tiny stand-in for insightface's buffalo_l pack, as ONNX files insightface itself loads and runs
(its model router tells the models apart by their inputs and outputs, as with the real pack):

* ``det_10g.onnx``: an SCRFD-shaped detector (640 x 640 input; scores, box distances and five
  key points for strides 8, 16 and 32, two anchors per cell) whose outputs are fixed: the faces
  in FACES, whatever the picture (with ``faces=()`` it finds none);
* ``w600k_r50.onnx``: an ArcFace-shaped recogniser (112 x 112 aligned face in, 512 numbers out),
  a seeded linear map of the aligned face, so the embedding follows the picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 640
# (stride, row, column, half the box side in strides, score): a big face in the middle and a
# smaller one up left, the smaller one scored higher (the largest, not the surest, is used).
FACES = ((32, 10, 10, 4.0, 0.9), (8, 20, 20, 2.0, 0.95))
# Five key points (eyes, nose, mouth corners) around the anchor, in box half-sides.
KEY_POINTS = np.array([-0.4, -0.3, 0.4, -0.3, 0.0, 0.1, -0.3, 0.5, 0.3, 0.5], dtype=np.float32)


def _save(nodes, inputs, outputs, initializers, path: Path, name: str) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return Path(path)


def write_detector(path: Path, faces=FACES) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    picture = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    # The outputs depend on the input (times zero), so the graph reads the picture it is given.
    nodes = [helper.make_node("ReduceSum", ["input.1"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "zero"], ["nothing"])]
    initializers = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outputs = []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in (8, 16, 32):
            cells = SIZE // stride
            value = np.full((cells * cells * 2, width), 1.0 if kind == "bbox" else 0.0, np.float32)
            for face_stride, row, column, half, score in faces:
                if face_stride == stride:
                    anchor = (row * cells + column) * 2
                    value[anchor] = {"score": score, "bbox": half, "kps": KEY_POINTS * half}[kind]
            initializers.append(numpy_helper.from_array(value, f"{kind}{stride}_value"))
            nodes.append(helper.make_node("Add", [f"{kind}{stride}_value", "nothing"], [f"{kind}_{stride}"]))
            outputs.append(helper.make_tensor_value_info(f"{kind}_{stride}", TensorProto.FLOAT, list(value.shape)))
    return _save(nodes, [picture], outputs, initializers, path, "tiny_scrfd")


def write_recogniser(path: Path, seed: int = 0) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    weights = (np.random.default_rng(seed).standard_normal((3 * 112 * 112, 512)) * 0.01).astype(np.float32)
    return _save([helper.make_node("Flatten", ["input.1"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["out"])],
                 [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 512])],
                 [numpy_helper.from_array(weights, "w")], path, "tiny_arcface")


def write_pack(folder: Path, faces=FACES, seed: int = 0) -> Path:
    """The pack's two files in `folder` (…/insightface/models/buffalo_l)."""
    write_detector(Path(folder) / "det_10g.onnx", faces)
    write_recogniser(Path(folder) / "w600k_r50.onnx", seed)
    return Path(folder)
