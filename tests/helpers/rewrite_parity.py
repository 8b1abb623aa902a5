"""Helpers the rewrite parity tests share: run a module through ONNX Runtime, original or
rewritten."""

import io
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from glimmer.export.onnx_export import constants_to_initializers, op_histogram


def plain_onnx(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The original module, exported as is (BatchNormalization node kept)."""
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=17, input_names=["x"])
    return ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )[0]


def onnx_outputs(
    module: nn.Module,
    inputs: Sequence[torch.Tensor],
    dynamic_batch: bool = False,
    run_on: Optional[Sequence[torch.Tensor]] = None,
) -> Tuple[List[np.ndarray], Dict[str, int]]:
    """(every output, op histogram) of ``module`` traced on ``inputs`` and run in ONNX Runtime on
    ``run_on`` (default: the same inputs; another batch needs ``dynamic_batch``)."""
    names = [f"in{i}" for i in range(len(inputs))]
    axes = {name: {0: "batch"} for name in names} if dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the dynamo=False deprecation notice
        torch.onnx.export(
            module.eval(),
            tuple(inputs),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    constants_to_initializers(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {name: x.numpy() for name, x in zip(names, run_on if run_on is not None else inputs)}
    return session.run(None, feed), op_histogram(model)
