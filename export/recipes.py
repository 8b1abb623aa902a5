"""What glimmer-export does differently per model kind, one recipe each.

- classifier (GlimmerNet / TakuNet): the grouped dilated convs are lowered (``deploy_form``) in the
  mode asked for, or with ``auto`` in every mode that gives a different graph, timed against each
  other (as TensorRT engines where TensorRT builds here, else ONNX Runtime CPU) and the fastest
  kept;
- detector (YOLOv8): Conv+BN fused and the Detect head in export mode (``prepare_detector``).

A recipe returns the ONNX with its metadata attached, the PyTorch reference that the ONNX is
checked against and the lowering record for the report; :func:`glimmer.export.api.export` does
the rest alike for both.
"""

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from glimmer.runtime.backends.trt import engines as trt_engines
from glimmer.runtime.core.errors import GlimmerError

Log = Callable[[str], None]
Exported = Tuple[
    Any, Any, Any, Dict[str, Any]
]  # ONNX model, final meta, reference, lowering record
EXPORTER = "torch.onnx (TorchScript)"


def _example(meta: Any) -> Any:
    import torch

    return torch.zeros(meta.batch or 1, 3, *meta.input_size)


def check_class_names(source: Any, outputs: int) -> None:
    """The class names the artifacts will carry: one per model output, non-empty, unique (they
    name --val's folders and the labels glimmer-run prints)."""
    names = list(source.meta.class_names)
    where = f"{source.path}: class names"
    blank = [i for i, n in enumerate(names) if not str(n).strip()]
    if blank:
        raise GlimmerError(f"{where}: entry {blank[0]} is empty")
    seen = set()
    for n in names:
        if n in seen:
            raise GlimmerError(f"{where}: {n!r} appears more than once")
        seen.add(n)
    if outputs and len(names) != outputs:
        raise GlimmerError(
            f"{where}: {len(names)} names for a model with {outputs} classes (re-save the "
            "checkpoint with one name per class)"
        )


def _downsampling(model: Any) -> int:
    """How many times the network shrinks its input: the product of its convs' and poolings'
    strides."""
    import torch

    factor = 1
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            stride = module.stride
            factor *= int(stride[0] if isinstance(stride, (tuple, list)) else stride)
    return factor


def _runs_at(model: Any, size: int) -> Any:
    """The model's output for one zero image of ``size`` px, or None when a layer gets an empty
    map."""
    import torch

    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    try:
        with torch.no_grad():
            return model(torch.zeros(1, 3, size, size, dtype=dtype))
    except RuntimeError:  # "Output size is too small", "Kernel size can't be greater", ...
        return None


def smallest_input(model: Any, failed: int, limit: int = 4096) -> Optional[int]:
    """The smallest square size above ``failed`` the model runs at (None up to ``limit``)."""
    hi = max(2 * failed, 32)
    while _runs_at(model, hi) is None:
        if hi >= limit:
            return None
        hi = min(2 * hi, limit)
    lo = failed  # fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _runs_at(model, mid) is None:
            lo = mid
        else:
            hi = mid
    return hi


class DetectorRecipe:
    """YOLOv8: the head exports ``[B, 4 + nc, anchors]``; no lowering to choose."""

    task = "detect"
    scores_val = False  # --val is classifier accuracy; detectors are checked by glimmer-check

    def check_source(self, source: Any, img_size: Optional[int]) -> None:
        """Before any work: class names against the head (the size is checked against the
        stride when the checkpoint is loaded)."""
        head = list(source.model.modules())[-1] if source.model is not None else None
        outputs = getattr(source.model, "nc", None) or getattr(head, "nc", 0)
        check_class_names(source, int(outputs or 0))

    def export_fp32(self, source: Any, meta: Any, settings: Any, log: Log) -> Exported:
        from .loaders import prepare_detector
        from .onnx_export import attach_metadata, export_onnx

        example = _example(meta)
        reference = copy.deepcopy(source.model).eval()
        for module in reference.modules():  # the reference returns what the export returns
            if hasattr(module, "export") and hasattr(module, "format"):
                module.export = True
        log("exporting the detector (Conv+BN fused, Detect head in export mode)")
        model = export_onnx(
            prepare_detector(source.model, settings.dynamic_batch),
            example,
            opset=settings.opset,
            dynamic_batch=settings.dynamic_batch,
            output_names=("output0",),
        )
        meta = dataclasses.replace(
            meta, extra=dict(meta.extra, opset=settings.opset, exporter=EXPORTER)
        )
        attach_metadata(model, meta)
        return (
            model,
            meta,
            reference,
            {"applies": False, "reason": "no grouped dilated convs in a detector"},
        )


class ClassifierRecipe:
    """GlimmerNet / TakuNet: dilation lowering, timed under ``auto``."""

    task = "classify"
    scores_val = True

    def check_source(self, source: Any, img_size: Optional[int]) -> None:
        """Before any work: the input size runs through the network (one zero image; a size too
        small leaves a pooling with an empty map), and there is a class name per logit."""
        size = int(source.meta.input_size[0])
        out = _runs_at(source.model, size)
        if out is None:
            factor = _downsampling(source.model)
            minimum = smallest_input(source.model, size)
            least = (
                f"the smallest size it runs at is {minimum}"
                if minimum
                else "no size up to 4096 runs"
            )
            raise GlimmerError(
                f"--img-size {size} is too small for this network: it shrinks its input "
                f"{factor}x (strided convs and poolings), so at {size} px a layer is left "
                f"with an empty feature map; {least}"
            )
        check_class_names(source, int(out.shape[-1]))

    def export_fp32(self, source: Any, meta: Any, settings: Any, log: Log) -> Exported:
        from .deploy_model import deploy_form
        from .onnx_export import attach_metadata, export_onnx

        example = _example(meta)
        lowering: Dict[str, Any] = {}
        modes = (
            candidate_modes(source.model, lowering)
            if settings.dilation_mode == "auto"
            else [settings.dilation_mode]
        )
        candidates = {}
        for mode in modes:
            log(f"exporting with dilation mode {mode}")
            candidates[mode] = export_onnx(
                deploy_form(source.model, mode, meta.input_size),
                example,
                opset=settings.opset,
                dynamic_batch=settings.dynamic_batch,
                output_names=("logits",),
            )
        if len(modes) > 1:
            timings, lowering["timed_with"] = time_modes(candidates, meta, settings, log)
            lowering.update(
                timings
            )  # the interleaved comparison: timed_ms, round medians, noise, decided_by
        chosen = lowering.get("chosen", modes[0])
        lowering.update({"requested": settings.dilation_mode, "chosen": chosen})
        model = candidates[chosen]
        meta = dataclasses.replace(
            meta,
            extra=dict(meta.extra, dilation_mode=chosen, opset=settings.opset, exporter=EXPORTER),
        )
        attach_metadata(model, meta)
        return model, meta, source.model.eval(), lowering


RECIPES = {recipe.task: recipe for recipe in (ClassifierRecipe(), DetectorRecipe())}


def recipe_for(task: str) -> Any:
    """The recipe for a model's task (from its metadata, never a flag)."""
    if task not in RECIPES:
        raise GlimmerError(f"no export recipe for task {task!r} (known: {', '.join(RECIPES)})")
    return RECIPES[task]


def time_modes(
    candidates: Dict[str, Any], meta: Any, settings: Any, log: Log
) -> Tuple[Dict[str, Any], str]:
    """(comparison record, what timed it): batch latency of each candidate ONNX with TensorRT where
    it can build here (FP16 if ``fp16``), else with ONNX Runtime CPU on one thread. The candidates
    are held open together and timed in interleaved rounds, so load on a busy machine hits them
    alike, and a difference within the measured noise goes to the preferred lowering
    (DILATION_PREFERENCE)."""
    import contextlib
    import tempfile

    from glimmer.runtime.core.timing import compare_latency, plan_rounds

    from .onnx_export import save_onnx
    from .rewrites.dilation import DILATION_PREFERENCE
    from .verify import latency_input, ort_session

    batch = latency_input(meta)
    rounds, calls = plan_rounds(settings.latency_runs)
    runs = f"batch {batch.shape[0]}, {rounds} interleaved rounds of {calls} calls"

    def ort_call(model: Any) -> Any:
        session = ort_session(model.SerializeToString())
        feed = {session.get_inputs()[0].name: batch}
        return lambda: session.run(None, feed)

    usable, where = trt_engines.tensorrt_status()
    with contextlib.ExitStack() as stack:
        if usable:
            precision = "fp16" if settings.fp16 else "fp32"
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="glimmer-auto-")))
            runners = {}
            for mode, model in candidates.items():
                log(f"building dilation mode {mode} as a TensorRT {precision} engine")
                path = tmp / f"{mode}.onnx"
                save_onnx(model, path)
                runners[mode] = stack.enter_context(
                    trt_engines.tensorrt_runner(path, precision, meta, batch, tmp)
                )
            timed_with = f"{where}, {precision} engine, {runs}"
        else:
            runners = {mode: ort_call(model) for mode, model in candidates.items()}
            timed_with = f"ONNX Runtime CPU, 1 thread, {runs}"
        log(
            f"timing dilation modes {', '.join(runners)}: "
            f"{rounds} interleaved rounds of {calls} calls"
        )
        result = compare_latency(
            runners, DILATION_PREFERENCE, rounds=rounds, calls=calls, warmup=10
        )
    return result.report(), timed_with


def candidate_modes(model: Any, lowering: Dict[str, Any]) -> List[str]:
    """The dilation modes ``auto`` times: those that give different graphs for ``model``."""
    from .rewrites.dilation import MODES as LOWERINGS
    from .rewrites.dilation import stream_sizes

    if len(set(model.config.dilations)) == 1:
        lowering["note"] = "a single dilation: every mode gives the same single depthwise conv"
        return ["split"]
    gds = [stage.blocks[0].conv for stage in model.stages]
    if all(stream_sizes(gd, "aligned") == stream_sizes(gd, "split") for gd in gds):
        lowering["note"] = (
            "every run of equal dilation is a multiple of 4 channels: aligned is split"
        )
        return [m for m in LOWERINGS if m != "aligned"]
    return list(LOWERINGS)
