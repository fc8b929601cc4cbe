"""Makes the anomaly models of the station tests: ``edge_anomaly.onnx`` and ``edge_anomaly_hybrid.onnx``.

    python tests/data/make_edge_anomaly.py     # writes both next to this file (needs numpy and onnx)

Real ONNX graphs of the anomaly-bundle contract (``deploy.manifest``), small enough to compute by hand, over
32 px gray images preprocessed with mean 0.5 and std 0.5 (so ``x = v / 127.5 - 1`` for grey level v):

- ``anomaly_map`` [N, 1, 32, 32] = ``SCALE * mean over channels of (x - CENTRE)^2``: 1.0 where a pixel is
  ``1 / sqrt(SCALE)`` = 0.2 (25.5 grey levels) away from mid grey;
- ``score`` [N] = the largest value of the map;
- the hybrid adds ``kind_distance`` [N, 2] = ``(mean of x - KIND_CENTRES[k])^2``: a part whose average level
  is a kind's is at distance 0 from it.

``tests/test_edge_tier.py`` checks that the committed files are what this script builds (the edge tier runs
without the ``onnx`` package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE_PX = 32
MEAN, STD = 0.5, 0.5  # x = (v / 255 - 0.5) / 0.5 = v / 127.5 - 1
CENTRE = 0.0  # the good part's normalised level (mid grey, v = 127.5)
SCALE = 25.0  # 1 / 0.2^2
KINDS = ("dark", "bright")
KIND_CENTRES = (-0.6, 0.6)  # grey levels 51 and 204
HERE = Path(__file__).resolve().parent


def model_path(hybrid: bool) -> Path:
    return HERE / ("edge_anomaly_hybrid.onnx" if hybrid else "edge_anomaly.onnx")


def build_anomaly_model(hybrid: bool):
    """The graph as an ``onnx.ModelProto``; outputs score, anomaly_map (and kind_distance), in that order."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Sub", ["images", "centre"], ["offset"]),
        helper.make_node("Mul", ["offset", "offset"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["per_pixel"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["per_pixel", "scale"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    initializers = [numpy_helper.from_array(np.array(CENTRE, np.float32), "centre"),
                    numpy_helper.from_array(np.array(SCALE, np.float32), "scale")]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
               helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, SIZE_PX, SIZE_PX])]
    if hybrid:
        nodes += [helper.make_node("GlobalAveragePool", ["images"], ["pooled4"]),
                  helper.make_node("Flatten", ["pooled4"], ["pooled"], axis=1),  # N x 1
                  helper.make_node("Sub", ["pooled", "kind_centres"], ["to_centres"]),  # N x kinds
                  helper.make_node("Mul", ["to_centres", "to_centres"], ["kind_distance"])]
        initializers.append(numpy_helper.from_array(np.array([KIND_CENTRES], np.float32), "kind_centres"))
        outputs.append(helper.make_tensor_value_info("kind_distance", TensorProto.FLOAT, ["batch", len(KINDS)]))
    graph = helper.make_graph(
        nodes, "edge_anomaly_hybrid" if hybrid else "edge_anomaly",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, SIZE_PX, SIZE_PX])],
        outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    for hybrid in (False, True):
        model_path(hybrid).write_bytes(build_anomaly_model(hybrid).SerializeToString())
        print(model_path(hybrid))
