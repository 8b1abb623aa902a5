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
from typing import Any, Callable, Dict, List, Tuple

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


class DetectorRecipe:
    """YOLOv8: the head exports ``[B, 4 + nc, anchors]``; no lowering to choose."""

    task = "detect"
    scores_val = False  # --val is classifier accuracy; detectors are checked by glimmer-check

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
