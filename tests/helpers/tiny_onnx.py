"""Small ONNX models carrying our metadata, built here, and the data they are scored on.

The hand-built graphs compute something known (a linear function of the mean colour, a fixed
detection head), so tests can state the exact answer; :func:`export_tiny_glimmernet` is a real
(random-weight) GlimmerNet exported by torch.onnx.
"""

import warnings
from pathlib import Path
from typing import List, Sequence, Union

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from glimmer.runtime.core.images import labelled_images, read_image
from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta
from glimmer.train.synthetic import CLASSES


def save_with_meta(graph: onnx.GraphProto, meta: ModelMeta, path: Path) -> Path:
    """``graph`` as an opset-13 model with ``meta`` in its metadata, checked and saved to
    ``path``."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def add_meta(path: Path, meta: ModelMeta) -> None:
    """Add our metadata to the ONNX file at ``path``, in place."""
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    onnx.save(model, str(path))


def colour_classifier(
    path: Path, weight: np.ndarray, bias: np.ndarray, meta: ModelMeta, batch: Union[int, str] = 1
) -> Path:
    """logits = mean RGB of the input @ ``weight`` [3, nc] + ``bias`` [nc]: GlobalAveragePool ->
    Gemm, input ``images`` [batch, 3, size, size] with the size of ``meta``."""
    h, w = meta.input_size
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
            helper.make_node("Gemm", ["features", "w", "b"], ["logits"]),
        ],
        meta.name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, weight.shape[1]])],
        [
            numpy_helper.from_array(weight.astype(np.float32), "w"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    return save_with_meta(graph, meta, path)


def centroid_classifier(path: Path, centroids: np.ndarray, size: int = 64) -> Path:
    """A nearest-centroid classifier on mean RGB as an ONNX graph: GlobalAveragePool -> Gemm.

    logits_k = 2 c_k . x - |c_k|^2 (= -|x - c_k|^2 up to a constant), scaled so softmax is sharp.
    """
    weight = (2.0 * centroids.T * 20.0).astype(np.float32)  # [3, nc]
    bias = (-(centroids**2).sum(1) * 20.0).astype(np.float32)  # [nc]
    meta = ModelMeta(
        task="classify", name="centroids", class_names=list(CLASSES), input_size=(size, size)
    )
    return colour_classifier(path, weight, bias, meta)


def fit_centroids(root: Path) -> np.ndarray:
    """Mean RGB in [0, 1] of each class of a labelled folder (what the runtime feeds the model)."""
    paths, labels, _ = labelled_images(root, CLASSES)
    feats = np.array([read_image(p)[..., ::-1].reshape(-1, 3).mean(0) / 255.0 for p in paths])
    labels = np.array(labels)
    return np.stack([feats[labels == k].mean(0) for k in range(len(CLASSES))])


def fixed_detector(
    path: Path, head: np.ndarray, class_names: Sequence[str] = ("person", "car"), size: int = 64
) -> Path:
    """A detector whose output is always ``head`` [1, 4 + nc, N] (tied to the input, no dead
    node)."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Squeeze", ["z", "axes"], ["z1"]),
            helper.make_node("Add", ["head", "z1"], ["output0"]),
        ],
        "fixed_head",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(head.shape))],
        [
            numpy_helper.from_array(head.astype(np.float32), "head"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
            numpy_helper.from_array(np.array([3], np.int64), "axes"),
        ],
    )
    meta = ModelMeta(
        task="detect",
        name="fixed",
        class_names=list(class_names),
        input_size=(size, size),
        letterbox=True,
        stride=32,
    )
    return save_with_meta(graph, meta, path)


def yolo_set(root: Path, boxes_xyxy: List[List[float]], classes: List[int], size: int = 64) -> Path:
    """``root/images/a.png`` (size x size) and ``root/labels/a.txt`` with the given pixel boxes."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.full((size, size, 3), 90, np.uint8))
    lines = []
    for cls, (x1, y1, x2, y2) in zip(classes, boxes_xyxy):
        lines.append(
            f"{cls} {(x1 + x2) / 2 / size} {(y1 + y2) / 2 / size} "
            f"{(x2 - x1) / size} {(y2 - y1) / size}"
        )
    (root / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    return root


def export_tiny_glimmernet(path: Path, dynamic_batch: bool = False):
    """A GlimmerNet (depths 1,1,1,1, 4 classes, random weights) exported by torch.onnx at 64 px to
    ``path`` (input ``images``, output ``logits``; a dynamic batch if asked), without metadata:
    give it with :func:`add_meta`. Returns the network."""
    import torch

    from glimmer.models.glimmernet import build_model

    net = build_model("glimmernet", config={"num_classes": 4, "depths": (1, 1, 1, 1)}).eval()
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            torch.randn(1, 3, 64, 64),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
            dynamic_axes=axes,
        )
    return net
