"""The model metadata schema: what an artifact says about itself so the runtime needs no flags.

Export writes it as JSON under the ONNX ``metadata_props`` key ``glimmer`` (and into an engine's
sidecar JSON); the runtime, calibration and checks read it back through :meth:`ModelMeta.from_json`.
An ONNX made by ultralytics' own exporter (no ``glimmer`` key) is read from its ``names`` /
``imgsz`` / ``stride`` / ``task`` keys (and ``end2end`` / ``args``, for the head), with
``ast.literal_eval``, never ``eval``.
"""

import ast
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple

from glimmer.runtime.core.errors import GlimmerError

METADATA_KEY = "glimmer"
SCHEMA_VERSION = 1
TASKS = ("classify", "detect")
CHANNEL_ORDERS = ("RGB", "BGR")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ModelMeta:
    """Everything between a camera frame and the model input, and how to read its output.

    Attributes:
        task: ``classify`` (logits ``[B, nc]``) or ``detect`` (``[B, 4 + nc, anchors]``, xywh; or
            end-to-end ``[B, N, 6]`` when ``extra.end2end``, see :attr:`end2end`).
        name: model name (``glimmernet``, ``yolov8m-pruned``...).
        class_names: one name per output class, index order.
        input_size: (height, width) of the network input.
        channel_order: order the network expects; frames arrive BGR from OpenCV.
        scale: multiplier applied to uint8 pixels (1/255 maps to [0, 1]).
        mean, std: optional per-channel normalisation after scaling (in ``channel_order``).
        letterbox: keep aspect ratio and pad (detection) instead of a plain resize.
        pad_value: letterbox fill value (ultralytics uses 114).
        stride: the detector's largest stride (input sizes must be multiples of it).
        precision: numeric form of the artifact: ``fp32``, ``fp16`` or ``int8``.
        batch: fixed batch size, or None when the batch dimension is dynamic.
        source_sha256: sha256 of the checkpoint the artifact was made from.
        extra: free-form provenance (arch config, dilation mode, metrics).
    """

    task: str
    name: str
    class_names: List[str]
    input_size: Tuple[int, int]
    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None
    letterbox: bool = False
    pad_value: int = 114
    stride: Optional[int] = None
    precision: str = "fp32"
    batch: Optional[int] = 1
    source_sha256: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        self.class_names = [str(c) for c in self.class_names]
        if self.mean is not None:
            self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        if self.std is not None:
            self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def end2end(self) -> Optional[bool]:
        """A detector's head is end-to-end (``[B, N, 6]``: x1, y1, x2, y2, score, class; NMS
        done) per ``extra.end2end``; None when the metadata does not say, and the output shape
        must decide. Kept in ``extra`` so older runtimes still read the schema."""
        value = (self.extra or {}).get("end2end")
        return None if value is None else bool(value)

    def validate(self) -> None:
        """Raise :class:`GlimmerError` naming the first offending key."""
        if self.task not in TASKS:
            raise GlimmerError(f"metadata key 'task' must be one of {TASKS}, got {self.task!r}")
        if not self.class_names:
            raise GlimmerError("metadata key 'class_names' is empty")
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise GlimmerError(
                "metadata key 'input_size' must be [height, width] > 0, "
                f"got {list(self.input_size)!r}"
            )
        if self.channel_order not in CHANNEL_ORDERS:
            raise GlimmerError(
                f"metadata key 'channel_order' must be RGB or BGR, got {self.channel_order!r}"
            )
        if self.precision not in PRECISIONS:
            raise GlimmerError(
                f"metadata key 'precision' must be one of {PRECISIONS}, got {self.precision!r}"
            )
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                raise GlimmerError(f"metadata key {key!r} must have 3 values")
        if self.std is not None and min(self.std) <= 0:
            raise GlimmerError("metadata key 'std' must be positive")
        if self.batch is not None and int(self.batch) <= 0:
            raise GlimmerError("metadata key 'batch' must be positive or null")

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "metadata") -> "ModelMeta":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GlimmerError(f"{origin}: unknown metadata key {unknown[0]!r}")
        for key in ("task", "name", "class_names", "input_size"):
            if key not in data:
                raise GlimmerError(f"{origin}: metadata key {key!r} is missing")
        if int(data.get("schema", SCHEMA_VERSION)) > SCHEMA_VERSION:
            raise GlimmerError(
                "{}: metadata schema {} is newer than this runtime understands ({})".format(
                    origin, data["schema"], SCHEMA_VERSION
                )
            )
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as exc:
            raise GlimmerError(f"{origin}: malformed metadata: {exc}") from None

    @classmethod
    def from_json(cls, text: str, origin: str = "metadata") -> "ModelMeta":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise GlimmerError(f"{origin}: metadata is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise GlimmerError(f"{origin}: metadata must be a JSON object")
        return cls.from_dict(data, origin)

    @classmethod
    def from_props(cls, props: Mapping[str, str], origin: str = "model") -> "ModelMeta":
        """Read from ONNX metadata_props: ours if present, else ultralytics' keys."""
        if METADATA_KEY in props:
            return cls.from_json(props[METADATA_KEY], origin)
        if "names" in props and "imgsz" in props:
            return _from_ultralytics(props, origin)
        raise GlimmerError(
            f"{origin}: no model metadata (export it with glimmer-export, which records task, "
            "classes and preprocessing)"
        )


def _from_ultralytics(props: Mapping[str, str], origin: str) -> ModelMeta:
    try:
        names = ast.literal_eval(props["names"])
        imgsz = ast.literal_eval(props["imgsz"])
        stride = int(ast.literal_eval(props.get("stride", "32")))
        batch = int(ast.literal_eval(props.get("batch", "1")))
    except (ValueError, SyntaxError) as exc:
        raise GlimmerError(f"{origin}: unreadable ultralytics metadata: {exc}") from None
    task = props.get("task", "detect")
    if task != "detect":
        raise GlimmerError(f"{origin}: ultralytics task {task!r} is not supported (detect only)")
    class_names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    end2end = _ultralytics_end2end(props)
    return ModelMeta(
        task="detect",
        name=props.get("description", "ultralytics"),
        class_names=class_names,
        input_size=(int(imgsz[0]), int(imgsz[1])),
        channel_order="RGB",
        letterbox=True,
        stride=stride,
        batch=batch,
        extra={} if end2end is None else {"end2end": end2end},
    )


def _ultralytics_end2end(props: Mapping[str, str]) -> Optional[bool]:
    """ultralytics' own rule (its AutoBackend): the output is end-to-end ``[B, N, 6]`` when
    ``end2end`` (an NMS-free head) or ``args['nms']`` (NMS inside the graph) is true. None when
    the export records neither key (older ultralytics), or they cannot be read."""
    if "end2end" not in props and "args" not in props:
        return None
    try:
        end2end = ast.literal_eval(props.get("end2end", "False"))
        args = ast.literal_eval(props.get("args", "{}"))
    except (ValueError, SyntaxError):
        return None
    return bool(end2end or (isinstance(args, dict) and args.get("nms")))
