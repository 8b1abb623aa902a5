"""PyTorch -> ONNX for deployment: a clean static graph, our metadata, an op histogram.

Exporter choice: torch 2.14's ``torch.onnx.export`` defaults to the dynamo exporter, which cannot
emit opset 17 (it exports at 18 and its down-conversion fails on Reduce* axes), takes seconds per
model, and is not what TensorRT 8.4-8.6's parsers were validated against. We call the TorchScript
exporter (``dynamo=False``): for our models it honours the requested opset, folds constants into the
graph without Shape/Gather chains when shapes are static, and marks a dynamic batch through
``dynamic_axes``. Its ``Constant`` nodes are then moved into initializers, so the op histogram
counts real work only.

Output: an ONNX with our metadata, a static or dynamic batch, opset 17 by default; the metadata
schema is in :mod:`glimmer.runtime.core.metadata`.
"""

import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import onnx
import torch
from onnx import numpy_helper

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_path
from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta

DEFAULT_OPSET = 17
INPUT_NAME = "images"

#: ops seen in our graphs that TensorRT's ONNX parser imports from 8.4 on (its operators.md).
TRT_84_OPS = frozenset(
    {
        "Add",
        "AveragePool",
        "Clip",
        "Concat",
        "Conv",
        "DequantizeLinear",
        "Div",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "MatMul",
        "MaxPool",
        "Mul",
        "QuantizeLinear",
        "ReduceL2",
        "ReduceMean",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Resize",
        "Sigmoid",
        "Softmax",
        "Split",
        "Sqrt",
        "Sub",
        "Transpose",
        "Slice",
        "Unsqueeze",
        "Squeeze",
        "BatchNormalization",
        "Pow",
        "Identity",
        "Shape",
        "Gather",
        "Cast",
        "Range",
        "Expand",
        "ConstantOfShape",
        "Tile",
        "Equal",
        "Where",
        "Exp",
        "Log",
        "Tanh",
        "Max",
        "Min",
        "ReduceMax",
        "TopK",
        "HardSigmoid",
        "LeakyRelu",
    }
)
#: ops that mark dynamic-shape arithmetic or slow scatter paths: never in our GlimmerNet graphs.
CRUFT_OPS = ("ScatterND", "Shape", "Gather", "Slice", "ConstantOfShape", "Range", "Expand")


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    output_names: Sequence[str] = ("output",),
) -> onnx.ModelProto:
    """Trace ``module`` on ``example`` with the TorchScript exporter and tidy the graph."""
    buf = io.BytesIO()
    axes = None
    if dynamic_batch:
        axes = {INPUT_NAME: {0: "batch"}}
        axes.update({name: {0: "batch"} for name in output_names})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the dynamo=False deprecation notice
        try:
            torch.onnx.export(
                module.eval(),
                (example,),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many types; the message is what users need
            raise GlimmerError(
                f"torch.onnx.export failed at opset {opset}: {str(exc).splitlines()[0]}"
            ) from None
    model = onnx.load_from_string(buf.getvalue())
    constants_to_initializers(model)
    onnx.checker.check_model(model)
    return model


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Move ``Constant`` nodes into initializers and bypass Identity nodes on initializers."""
    graph = model.graph
    keep = []
    init_names = {t.name for t in graph.initializer}
    rename: Dict[str, str] = {}
    for node in graph.node:
        if (
            node.op_type == "Constant"
            and len(node.attribute) == 1
            and node.attribute[0].name == "value"
        ):
            tensor = numpy_helper.from_array(
                numpy_helper.to_array(node.attribute[0].t), node.output[0]
            )
            graph.initializer.append(tensor)
            init_names.add(node.output[0])
            continue
        if (
            node.op_type == "Identity"
            and node.input[0] in init_names
            and node.output[0] not in {o.name for o in graph.output}
        ):
            rename[node.output[0]] = node.input[0]
            continue
        keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)


def attach_metadata(model: onnx.ModelProto, meta: ModelMeta) -> None:
    """Write ``meta`` as JSON under metadata_props key ``glimmer`` (replacing an older entry)."""
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    model.producer_name = "glimmer-export"


def read_metadata(model: onnx.ModelProto, origin: str) -> ModelMeta:
    """Our metadata, or ultralytics' keys; neither -> GlimmerError naming ``origin``."""
    return ModelMeta.from_props({p.key: p.value for p in model.metadata_props}, origin)


def op_histogram(model: onnx.ModelProto) -> Dict[str, int]:
    """Node count per op type (sorted by name)."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def unsupported_ops(model: onnx.ModelProto) -> List[str]:
    """Op types outside the TensorRT 8.4 parser set above."""
    return sorted({n.op_type for n in model.graph.node} - TRT_84_OPS)


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Write atomically: a failure leaves any earlier good file in place."""
    with atomic_path(Path(path)) as tmp:
        onnx.save(model, str(tmp))


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError...
        raise GlimmerError(
            f"{path}: not a readable ONNX model: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def input_shape(model: onnx.ModelProto) -> List[Optional[int]]:
    """The first input's shape, None for symbolic dimensions."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]
