"""Checking an exported ONNX against the PyTorch model it came from, and timing it.

What an export must pass: max abs difference on random and on image-like inputs (FP32 must stay
within 1e-4 for our models), top-1 agreement for a classifier, box and score agreement for a
detector, and ONNX Runtime CPU latency at batch 1 as a median of many runs.

Both kinds of input go through the runtime's own :class:`Preprocessor`, so they lie in the domain
the deployed model sees: "random" frames are uniform uint8 noise, "image-like" frames are smooth
colour fields with edges and blobs (drawn with OpenCV), the statistics a photo has and noise lacks.

Sessions, timing and accuracy are the runtime's (backends/ort/session.py, core/timing.py,
tools/evaluate.py), so an export figure means what the same figure on the drone means.
"""

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from glimmer.runtime.backends.ort.session import make_session
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.core.timing import latency_stats, sample_ms
from glimmer.runtime.tools.evaluate import (  # noqa: F401 - the names export/cli.py and int8.py use
    LabelledSet,
    predict_labels,
    score,
)
from glimmer.runtime.tools.evaluate import load_labelled as _load_labelled


def ort_session(model_bytes: bytes, threads: int = 1, simulate_qdq: bool = False):
    """A CPU ONNX Runtime session set up as deployment sets it (runtime/backends/ort/session.py).

    ``simulate_qdq`` turns ONNX Runtime's Q/DQ fusion off: Quantize/Dequantize run as written and
    the convs in float, which is what TensorRT computes (up to rounding) on any build CPU.
    """
    return make_session(model_bytes, threads=threads, simulate_qdq=simulate_qdq)


#: what ONNX Runtime's CPU provider fuses a Q/DQ group into when it uses integer arithmetic
INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "NhwcQLinearConv",
        "ConvInteger",
        "QGemm",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearMatMul",
    }
)


def integer_kernels(model_bytes: bytes) -> int:
    """How many nodes ONNX Runtime's CPU provider runs as integer kernels after its graph
    optimisations (0 for TensorRT placement: it fuses only Q/DQ groups whose output is quantised
    too)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="glimmer-ort-") as work:
        optimised = Path(work) / "optimised.onnx"
        make_session(model_bytes, optimized_model_path=optimised)
        graph = onnx.load(str(optimised)).graph
    return sum(1 for node in graph.node if node.op_type in INTEGER_OPS)


def _frame(rng: np.random.Generator, h: int, w: int, image_like: bool) -> np.ndarray:
    import cv2

    if not image_like:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    grid = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 7))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            p = rng.integers(0, max(h, w), 4)
            cv2.line(
                img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, int(rng.integers(1, 4))
            )
        else:
            c = rng.integers(0, max(h, w), 2)
            cv2.circle(
                img,
                (int(c[0]), int(c[1])),
                int(rng.integers(2, max(3, min(h, w) // 4))),
                colour,
                -1,
            )
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def sample_inputs(meta: ModelMeta, count: int, image_like: bool, seed: int = 0) -> np.ndarray:
    """``count`` preprocessed NCHW float32 inputs for ``meta`` (frames 4:3, so letterboxing
    shows)."""
    rng = np.random.default_rng(seed)
    h, w = meta.input_size
    frames = [_frame(rng, max(8, h * 3 // 4), w, image_like) for _ in range(count)]
    return Preprocessor(meta)(frames)[0]


def _batches(x: np.ndarray, batch: Optional[int]) -> List[np.ndarray]:
    size = batch or 2  # a dynamic batch is checked at 2, proving the batch axis really is free
    return [x[i : i + size] for i in range(0, len(x) - size + 1, size)]


def compare(
    torch_fn: Callable[[torch.Tensor], torch.Tensor],
    session,
    meta: ModelMeta,
    count: int = 8,
    seed: int = 0,
    inputs: Optional[Dict[str, np.ndarray]] = None,
) -> Dict[str, Any]:
    """ONNX Runtime vs PyTorch on ``count`` random and ``count`` image-like inputs, or on the given
    preprocessed ``inputs`` by kind (an INT8 model is calibrated for real images, not noise)."""
    input_name = session.get_inputs()[0].name
    result: Dict[str, Any] = {"inputs_per_kind": count}
    refs, outs = [], []
    kinds = inputs or {
        kind: sample_inputs(meta, count, image_like, seed)
        for kind, image_like in (("random", False), ("image_like", True))
    }
    for kind, x in kinds.items():
        diffs = []
        for chunk in _batches(x, meta.batch):
            with torch.no_grad():
                ref = torch_fn(torch.from_numpy(chunk)).detach().float().numpy()
            out = session.run(None, {input_name: chunk})[0]
            if out.shape != ref.shape:
                raise GlimmerError(
                    f"ONNX output shape {list(out.shape)} differs from PyTorch's {list(ref.shape)}"
                )
            diffs.append(float(np.abs(out.astype(np.float64) - ref).max()))
            refs.append(ref)
            outs.append(out)
        result[f"max_abs_diff_{kind}"] = max(diffs)
    ref_all, out_all = np.concatenate(refs), np.concatenate(outs)
    result["max_abs_diff"] = max(result[f"max_abs_diff_{kind}"] for kind in kinds)
    result["max_abs_reference"] = float(np.abs(ref_all).max())
    if meta.task == "classify":
        result["top1_agreement"] = float((ref_all.argmax(1) == out_all.argmax(1)).mean())
    else:
        result.update(detection_agreement(ref_all, out_all))
    return result


def detection_agreement(ref: np.ndarray, out: np.ndarray, top_k: int = 10) -> Dict[str, float]:
    """Box and score agreement of ``[B, 4 + nc, anchors]`` outputs (xywh pixels, class scores).

    ``top_k_agree``: of each image's ``top_k`` anchors by PyTorch's best class score, the share
    where ONNX gives the same class, a score within 1e-3 and box centres within one pixel; ranking
    by score rather than a confidence threshold keeps the check meaningful for untrained weights
    too.
    """
    scores_r, scores_o = ref[:, 4:], out[:, 4:]
    best_r = scores_r.max(1)
    k = min(top_k, best_r.shape[1])
    agree, total = 0, 0
    for i in range(ref.shape[0]):
        idx = np.argsort(-best_r[i])[:k]
        same_cls = scores_r[i][:, idx].argmax(0) == scores_o[i][:, idx].argmax(0)
        close_score = np.abs(best_r[i, idx] - scores_o[i][:, idx].max(0)) <= 1e-3
        close_box = np.abs(ref[i, :2, idx] - out[i, :2, idx]).max(-1) <= 1.0
        agree += int((same_cls & close_score & close_box).sum())
        total += k
    return {
        "box_max_abs_diff": float(np.abs(ref[:, :4] - out[:, :4]).max()),
        "score_max_abs_diff": float(np.abs(scores_r - scores_o).max()),
        "top_k": k,
        "top_k_agree": agree / total if total else 1.0,
    }


def time_calls(
    fn: Callable[[], Any], batch_size: int, runs: int = 100, warmup: int = 10
) -> Dict[str, float]:
    """Median and p90 wall time of ``fn()`` in milliseconds (the runtime's timer)."""
    stats = latency_stats(sample_ms(fn, runs, warmup), digits=None)
    return {
        "median_ms": stats["median_ms"],
        "p90_ms": stats["p90_ms"],
        "runs": runs,
        "batch": int(batch_size),
    }


def latency_ms(session, batch: np.ndarray, runs: int = 100, warmup: int = 10) -> Dict[str, float]:
    """Median and p90 wall time of ``session.run`` (ONNX Runtime) in milliseconds."""
    feed = {session.get_inputs()[0].name: batch}
    return time_calls(lambda: session.run(None, feed), batch.shape[0], runs, warmup)


def latency_input(meta: ModelMeta) -> np.ndarray:
    """Batch-1 input (or the static batch when the model has one other than 1)."""
    return sample_inputs(meta, meta.batch or 1, image_like=True, seed=1)


def load_labelled(meta: ModelMeta, root: Path, option: str = "--val") -> LabelledSet:
    """Read and preprocess ``root`` once (the runtime evaluator's rule: unreadable images are
    skipped and counted); an empty set is an error naming ``option``."""
    return _load_labelled(meta, root, option)
