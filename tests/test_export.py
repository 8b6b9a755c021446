"""The exported feature graph: the same features as the torch network it comes from, with
its padding folded into the convolutions, and the folding itself checked against the
unfolded graph on graphs built to trip it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ind_knn_ad.features.backbones import build_backbone
from ind_knn_ad.features.export import fold_padding, onnx_graph
from ind_knn_ad.features.patches import PatchFeatures

# Relative to the features' largest magnitude: two float32 implementations of the same
# network (test_equivalence.py compares scores made from them).
FEATURE_TOLERANCE = 1e-5


def run_graph(graph: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


@pytest.mark.parametrize("size", [(224, 224), (256, 192), (97, 131)])
def test_the_graph_gives_the_networks_features_with_no_pad_left(size: tuple[int, int]) -> None:
    network = PatchFeatures(build_backbone("efficientnet_lite0", (2, 3)))
    width, height = size
    images = np.random.default_rng(0).standard_normal((3, 3, height, width), np.float32)
    other = torch.from_numpy(images[:, :, : height - 5, : width - 3]).contiguous()
    with torch.inference_mode():
        before = network(torch.from_numpy(images)).numpy()
        before_other = network(other).numpy()
    graph = onnx_graph(network, size)
    operators = {node.op_type for node in onnx.load_from_string(graph).graph.node}
    assert not operators & {"Pad", "Ceil"}
    for batch in (images[:1], images):  # the batch axis stays dynamic
        features = run_graph(graph, {"images": batch})
        expected = before[: len(batch)]
        assert features.shape == expected.shape
        scale = np.abs(expected).max()
        assert np.abs(features - expected).max() <= FEATURE_TOLERANCE * scale
    with torch.inference_mode():  # the network itself pads as before, at any input size
        np.testing.assert_array_equal(network(torch.from_numpy(images)).numpy(), before)
        np.testing.assert_array_equal(network(other).numpy(), before_other)


def pad_then_conv(
    pads: list[int],
    value: float | None = 0.0,
    mode: str = "constant",
    conv_pads: list[int] | None = None,
    readers: int = 1,
) -> onnx.ModelProto:
    """x -> Pad -> Conv (3x3, stride 2) [-> a second Conv of the same padded tensor]."""
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3), np.float32), "weight")
    constants = [weight, numpy_helper.from_array(np.array(pads, np.int64), "pads")]
    pad_inputs = ["x", "pads"]
    if value is not None:
        constants.append(numpy_helper.from_array(np.array(value, np.float32), "value"))
        pad_inputs.append("value")
    nodes = [helper.make_node("Pad", pad_inputs, ["padded"], mode=mode)]
    extra = {"pads": conv_pads} if conv_pads else {}
    outputs = []
    for index in range(readers):
        name = f"y{index}"
        nodes.append(
            helper.make_node("Conv", ["padded", "weight"], [name], strides=[2, 2], **extra)
        )
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", "c", "h", "w"]))
    graph = helper.make_graph(
        nodes,
        "pad_then_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 9, 8])],
        outputs,
        constants,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("graph", "folds"),
    [
        pytest.param(pad_then_conv([0, 0, 0, 1, 0, 0, 1, 2]), 1, id="zeros, asymmetric"),
        pytest.param(
            pad_then_conv([0, 0, 1, 1, 0, 0, 1, 1], value=None), 1, id="no constant value"
        ),
        pytest.param(
            pad_then_conv([0, 0, 0, 1, 0, 0, 1, 0], conv_pads=[1, 1, 1, 1]),
            1,
            id="added to the conv's own",
        ),
        pytest.param(pad_then_conv([0, 0, 1, 1, 0, 0, 1, 1], value=1.0), 0, id="padded with ones"),
        pytest.param(pad_then_conv([0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"), 0, id="reflected"),
        pytest.param(pad_then_conv([1, 0, 0, 0, 0, 0, 0, 0]), 0, id="batch padded"),
        pytest.param(pad_then_conv([0, 0, -1, 0, 0, 0, 1, 1]), 0, id="cropping"),
        pytest.param(pad_then_conv([0, 0, 1, 1, 0, 0, 1, 1], readers=2), 0, id="two readers"),
    ],
)
def test_folding_changes_no_output(graph: onnx.ModelProto, folds: int) -> None:
    x = np.random.default_rng(2).standard_normal((1, 2, 9, 8), np.float32)
    before = graph.SerializeToString()
    assert fold_padding(graph) == folds
    onnx.checker.check_model(graph)
    assert sum(node.op_type == "Pad" for node in graph.graph.node) == 1 - folds
    np.testing.assert_allclose(
        run_graph(graph.SerializeToString(), {"x": x}),
        run_graph(before, {"x": x}),
        rtol=1e-6,
        atol=1e-6,
    )
