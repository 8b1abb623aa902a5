"""glimmer-bench peers that need torch or ultralytics, registered under the entry-point group
``glimmer.bench_peers`` so the runtime (which never imports torch) finds them by name.

- ``torch[=CKPT]``: PyTorch eager on the same preprocessed batch: the model from CKPT (our .pt, a
  reference .ckpt or an ultralytics .pt, loaded as glimmer-export loads it), or, for GlimmerNet,
  rebuilt from the ONNX metadata's ``extra.config`` (random weights: latency does not depend on
  their values).
- ``ultralytics``: the ultralytics predictor (``YOLO(onnx).predict``) on the same ONNX file and the
  same frames, its own letterbox, inference and NMS included: compared with ours per frame.

Each raises :class:`PeerUnavailable` with the reason when it cannot run here, never crashes the run.
"""

from pathlib import Path
from typing import Callable

from glimmer.runtime.tools.peers import Peer, PeerContext, PeerUnavailable


class TorchPeer(Peer):
    """PyTorch eager, ``torch.inference_mode``, the same intra-op thread count as ours."""

    name = "torch"
    scope = "model"
    label = "PyTorch eager (CPU)"

    def _model(self, ctx: PeerContext):
        from glimmer.runtime.core.errors import GlimmerError

        if self.arg:
            from .loaders import load_source

            try:
                source = load_source(Path(self.arg), ctx.meta.input_size[0])
            except GlimmerError as exc:
                raise PeerUnavailable(str(exc)) from None
            if source.model is None:
                raise PeerUnavailable(f"{self.arg}: not a PyTorch checkpoint (give torch=PATH.pt)")
            self.label = f"PyTorch eager, {Path(self.arg).name}"
            return source.model
        extra = ctx.meta.extra or {}
        if ctx.meta.task != "classify" or not isinstance(extra.get("config"), dict):
            raise PeerUnavailable(
                "the model's metadata has no extra.config to rebuild it from: give "
                "the checkpoint as torch=PATH.pt"
            )
        from glimmer.models.glimmernet import build_model

        try:
            model = build_model(str(extra.get("arch", "glimmernet")), config=extra["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerUnavailable(f"cannot rebuild from extra.config: {exc}") from None
        self.label = "PyTorch eager, rebuilt from extra.config (random weights)"
        return model

    def prepare(self, ctx: PeerContext) -> Callable[[], object]:
        try:
            import torch
        except ImportError:
            raise PeerUnavailable(
                "torch is not installed (pip install 'glimmer-edge[export]')"
            ) from None
        model = self._model(ctx).float().eval()
        if ctx.threads:
            torch.set_num_threads(ctx.threads)
        batch = torch.from_numpy(ctx.batch.astype("float32", copy=False))

        def step():
            with torch.inference_mode():
                return model(batch)

        return step


class UltralyticsPeer(Peer):
    """ultralytics' own predictor on our ONNX file: letterbox + ONNX Runtime + its NMS per frame."""

    name = "ultralytics"
    scope = "frame"
    label = "ultralytics YOLO(onnx).predict"

    def prepare(self, ctx: PeerContext) -> Callable[[], object]:
        if ctx.meta.task != "detect":
            raise PeerUnavailable("the ultralytics predictor is compared for detectors only")
        if ctx.model_path.suffix.lower() != ".onnx":
            raise PeerUnavailable("ultralytics runs the .onnx here; give the .onnx to --model")
        from glimmer.models.yolo import yolo
        from glimmer.runtime.core.errors import GlimmerError

        try:
            model = yolo(ctx.model_path)
        except GlimmerError as exc:  # ultralytics is not installed
            raise PeerUnavailable(str(exc)) from None
        h, w = ctx.meta.input_size
        frames = ctx.frames
        state = {"i": 0}

        def step():
            frame = frames[state["i"] % len(frames)]
            state["i"] += 1
            return model.predict(
                frame, imgsz=(h, w), device="cpu", verbose=False, conf=0.25, iou=0.45
            )

        return step
