"""The patch-feature network as the ONNX graph that scoring runs (`runtime.detector`).

The graph is made for one input size, so what depends only on that size is computed here
once rather than at every scoring call: timm's TensorFlow-style "same" convolutions (the
EfficientNet-Lite backbones) work out their padding from the input's shape in every
forward, which a plain export records as shape arithmetic and a separate Pad in front of
each such convolution. Constant padding folded into the convolution itself leaves the
arithmetic unchanged and makes the graph about a third faster on the CPU
(`bench/batch.py`, docs/benchmarks.md).
"""

from __future__ import annotations

import collections
import io
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.padding import pad_same_arg
from torch import nn

OPSET = 17


def onnx_graph(network: nn.Module, size: tuple[int, int]) -> bytes:
    """`network` (on the CPU) as ONNX bytes for inputs of (width, height), with a dynamic
    batch axis, its shape arithmetic folded and its zero padding inside the convolutions."""
    width, height = size
    example = torch.zeros(1, 3, height, width)
    buffer = io.BytesIO()
    with static_same_padding(network, example), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            buffer,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    graph = fold_constants(buffer.getvalue())
    fold_padding(graph)
    onnx.checker.check_model(graph)
    return graph.SerializeToString()


@contextmanager
def static_same_padding(network: nn.Module, example: torch.Tensor) -> Iterator[None]:
    """Within the block, each "same" convolution of `network` pads by the constant amounts
    that inputs shaped like `example` get; outside it, as before."""
    shapes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        shapes[module] = tuple(inputs[0].shape[-2:])

    same = [module for module in network.modules() if isinstance(module, Conv2dSame)]
    hooks = [module.register_forward_pre_hook(record) for module in same]
    try:
        with torch.inference_mode():
            network(example)
    finally:
        for hook in hooks:
            hook.remove()
    for module, shape in shapes.items():
        pads = pad_same_arg(shape, module.kernel_size, module.stride, module.dilation)
        module.forward = partial(_padded_convolution, module, tuple(pads))
    try:
        yield
    finally:
        for module in shapes:
            del module.forward  # the instance's attribute: the class's forward again


def _padded_convolution(
    module: nn.Conv2d, pads: tuple[int, int, int, int], x: torch.Tensor
) -> torch.Tensor:
    return F.conv2d(
        F.pad(x, pads), module.weight, module.bias, module.stride, 0, module.dilation, module.groups
    )


def fold_constants(graph: bytes) -> onnx.ModelProto:
    """The graph after ONNX Runtime's basic optimizations: constant folding, redundant
    nodes removed and semantics-preserving fusions, all of them standard ONNX operators, so
    the result runs on any provider (the extended levels would tie it to this CPU)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # The session only optimizes, never runs: no thread pool or arena to map memory for in a
    # fit that runs close to its address-space limit (tests/test_memory_bounds.py).
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "graph.onnx")
        onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def fold_padding(graph: onnx.ModelProto) -> int:
    """Merge each constant zero Pad of the spatial axes into the one Conv that reads it
    (ONNX Conv pads each side on its own); the number merged."""
    nodes = graph.graph.node
    constants = {tensor.name: tensor for tensor in graph.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in nodes:
        for name in node.input:
            readers[name].append(node)
    outputs = {output.name for output in graph.graph.output}
    merged = []
    for pad in nodes:
        spatial = _spatial_zero_pads(pad, constants)
        users = readers[pad.output[0]] if spatial else []
        if len(users) != 1 or users[0].op_type != "Conv" or pad.output[0] in outputs:
            continue
        conv = users[0]
        attributes = {attribute.name: attribute for attribute in conv.attribute}
        if "auto_pad" in attributes and attributes["auto_pad"].s != b"NOTSET":
            continue
        if "pads" in attributes:
            before = list(attributes["pads"].ints)
            conv.attribute.remove(attributes["pads"])
        else:
            before = [0, 0, 0, 0]
        conv.attribute.append(helper.make_attribute("pads", np.add(before, spatial).tolist()))
        conv.input[0] = pad.input[0]
        merged.append(pad)
    for pad in merged:
        nodes.remove(pad)
    used = {name for node in nodes for name in node.input}
    for tensor in list(graph.graph.initializer):
        if tensor.name not in used:
            graph.graph.initializer.remove(tensor)
    return len(merged)


def _spatial_zero_pads(
    node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]
) -> list[int] | None:
    """A 4-d Pad's (top, left, bottom, right) when it pads only those with constant
    zeros, in ONNX Conv's order; else None."""
    if node.op_type != "Pad" or len(node.input) < 2 or node.input[1] not in constants:
        return None
    if len(node.input) > 3 and node.input[3]:  # axes (opset 18 on): pads of some axes only
        return None
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
    value = node.input[2] if len(node.input) > 2 else ""
    if mode != b"constant" or (value and value not in constants):
        return None
    if value and numpy_helper.to_array(constants[value]).any():
        return None
    pads = numpy_helper.to_array(constants[node.input[1]]).tolist()
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None
    return [pads[2], pads[3], pads[6], pads[7]]
