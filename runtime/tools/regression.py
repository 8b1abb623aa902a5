"""The regression checks of deploy.toml: the ``[checks.NAME]`` schema, validated on load, and
running each check against this machine.

A check is one model on one kind of data with bounds it must stay within:

    speed     data is a source (file, folder, camera); bounds min_fps (the glimmer-run pipeline's
              throughput) and max_p99_ms (p99 of the inference stage, trtexec's Latency).
    accuracy  data is a labelled folder (classifier: min_accuracy, min_f1_weighted) or a YOLO val
              set (detector: min_map50, min_map50_95); with ``reference = OTHER_MODEL`` and
              ``max_drop``, the drop of the headline metric (weighted F1 / mAP50-95) from the
              reference to this model (e.g. FP32 -> INT8) is bounded too.

``int8_kernels`` (auto | fused | simulated) is how ONNX Runtime's CPU EP runs an INT8 model of the
check (backends/ort/int8.py); the result notes which execution each INT8 model got, since fused
kernels can lose accuracy where u8*s8 pair sums saturate (x86 without VNNI). FP32 models are
unaffected.

``device`` names the machine the baseline was measured on (glimmer-bench's "device" line): on any
other machine the check is SKIPPED with the reason, never passed. A check whose model or data is
missing, or that cannot run, is an ERROR. Unknown keys are errors naming the key, with did-you-mean.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from glimmer.runtime.backends.ort.int8 import INT8_KERNELS, int8_note
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.settings import Key, did_you_mean, type_name
from glimmer.runtime.tools.config import BACKENDS, check_value

SPEED_BOUNDS = ("min_fps", "max_p99_ms")
ACCURACY_BOUNDS = ("min_accuracy", "min_f1_weighted", "min_map50", "min_map50_95")
BOUNDS = SPEED_BOUNDS + ACCURACY_BOUNDS + ("max_drop",)
CLASSIFY_BOUNDS = ("min_accuracy", "min_f1_weighted")
DETECT_BOUNDS = ("min_map50", "min_map50_95")

SCHEMA: Dict[str, Key] = {
    "model": Key("path"),
    "data": Key("source"),
    "reference": Key("path"),
    "device": Key("str"),
    "backend": Key("str", "auto", BACKENDS),
    "threads": Key("int", None, minimum=1),
    "int8_kernels": Key("str", "auto", INT8_KERNELS),
    "frames": Key("int", 200, minimum=1),
    "warmup": Key("int", 20, minimum=0),
    "min_fps": Key("float", None, minimum=0.0),
    "max_p99_ms": Key("float", None, minimum=0.0),
    "min_accuracy": Key("float", None, minimum=0.0, maximum=1.0),
    "min_f1_weighted": Key("float", None, minimum=0.0, maximum=1.0),
    "min_map50": Key("float", None, minimum=0.0, maximum=1.0),
    "min_map50_95": Key("float", None, minimum=0.0, maximum=1.0),
    "max_drop": Key("float", None, minimum=0.0, maximum=1.0),
}
#: bound -> (measured metric, direction): "min" bounds must be met from above, "max" from below
METRIC = {
    "min_fps": ("fps", "min"),
    "max_p99_ms": ("p99_ms", "max"),
    "min_accuracy": ("accuracy", "min"),
    "min_f1_weighted": ("f1_weighted", "min"),
    "min_map50": ("map50", "min"),
    "min_map50_95": ("map50_95", "min"),
    "max_drop": ("drop", "max"),
}
HEADLINE = {"classify": "f1_weighted", "detect": "map50_95"}


@dataclass
class Check:
    """One validated ``[checks.NAME]`` table (paths resolved against the file's folder)."""

    name: str
    model: Path
    data: str
    bounds: Dict[str, float]
    reference: Optional[Path] = None
    device: Optional[str] = None
    backend: str = "auto"
    threads: Optional[int] = None
    int8_kernels: str = "auto"
    frames: int = 200
    warmup: int = 20

    @property
    def kind(self) -> str:
        return "speed" if any(b in self.bounds for b in SPEED_BOUNDS) else "accuracy"


def _data_path(value: str, base: Path) -> str:
    """A relative file or folder is relative to deploy.toml; URIs and camera indices stay as
    given."""
    if "://" in value or value.isdigit() or value.startswith("/dev/"):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def parse_check(name: str, table: Any, origin: str, base: Path) -> Check:
    prefix = f"checks.{name}"
    if not isinstance(table, dict):
        raise GlimmerError(
            f"{origin}: key {prefix!r} must be a table ([{prefix}]), got {type_name(table)}"
        )
    values: Dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}"
        if key not in SCHEMA:
            hint = did_you_mean(key, SCHEMA).replace("'", f"'{prefix}.", 1)
            raise GlimmerError(f"{origin}: unknown key {dotted!r}{hint}")
        values[key] = check_value(dotted, SCHEMA[key], value, origin, base)
    for required in ("model", "data"):
        if required not in values:
            raise GlimmerError(f"{origin}: key '{prefix}.{required}' is missing")
    bounds = {k: float(values.pop(k)) for k in BOUNDS if k in values}
    if not bounds:
        raise GlimmerError(
            f"{origin}: [{prefix}] sets no bound: give at least one of {', '.join(BOUNDS)} "
            "(placeholders such as min_fps = 0.0 are filled in by --update-baseline)"
        )
    speed = [b for b in bounds if b in SPEED_BOUNDS]
    accuracy = [b for b in bounds if b not in SPEED_BOUNDS]
    if speed and accuracy:
        raise GlimmerError(
            f"{origin}: [{prefix}] mixes speed bounds ({', '.join(speed)}) with accuracy "
            f"bounds ({', '.join(accuracy)}); their data differ (a source vs a labelled "
            "set): split it into two checks"
        )
    if ("max_drop" in bounds) != ("reference" in values):
        missing = "reference" if "max_drop" in bounds else "max_drop"
        raise GlimmerError(
            f"{origin}: key '{prefix}.{missing}' is missing (max_drop bounds the drop "
            "from a reference model: give both)"
        )
    return Check(
        name=name,
        model=values["model"],
        data=_data_path(str(values["data"]), base),
        bounds=bounds,
        reference=values.get("reference"),
        device=values.get("device"),
        backend=values.get("backend", "auto"),
        threads=values.get("threads"),
        int8_kernels=values.get("int8_kernels", "auto"),
        frames=values.get("frames", 200),
        warmup=values.get("warmup", 20),
    )


def parse_checks(raw: Any, origin: str, base: Path) -> List[Check]:
    """Every ``[checks.NAME]`` of a deploy.toml's ``checks`` table, in file order."""
    if raw is None:
        raise GlimmerError(f"{origin}: no [checks.NAME] tables (see docs/check.md)")
    if not isinstance(raw, dict):
        raise GlimmerError(f"{origin}: key 'checks' must be a table of [checks.NAME] tables")
    checks = [parse_check(name, table, origin, base) for name, table in raw.items()]
    if not checks:
        raise GlimmerError(f"{origin}: [checks] holds no [checks.NAME] tables")
    return checks


# -- results --------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table: a bound against what was measured (or why nothing was)."""

    check: str
    metric: str
    status: str  # PASS, FAIL, SKIPPED, ERROR
    bound_key: Optional[str] = None
    baseline: Optional[float] = None
    measured: Optional[float] = None
    note: str = ""

    @property
    def margin(self) -> Optional[float]:
        """Headroom in the safe direction: relative for rates and latencies, absolute for a drop."""
        if self.baseline is None or self.measured is None or self.bound_key is None:
            return None
        direction = METRIC[self.bound_key][1]
        diff = (
            self.measured - self.baseline if direction == "min" else self.baseline - self.measured
        )
        if self.bound_key == "max_drop" or self.baseline == 0:
            return diff
        return diff / abs(self.baseline)


@dataclass
class CheckResult:
    check: Check
    rows: List[Row]
    measured: Dict[str, float] = field(default_factory=dict)
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        statuses = {r.status for r in self.rows}
        for status in ("ERROR", "FAIL", "SKIPPED"):
            if status in statuses:
                return status
        return "PASS"


def judge(check: Check, measured: Dict[str, float]) -> List[Row]:
    rows = []
    for key, bound in check.bounds.items():
        metric, direction = METRIC[key]
        value = measured[metric]
        ok = value >= bound if direction == "min" else value <= bound
        label = metric if key != "max_drop" else f"drop {measured.get('drop_metric', '')}".strip()
        rows.append(Row(check.name, label, "PASS" if ok else "FAIL", key, bound, value))
    return rows


# -- running --------------------------------------------------------------------------------------
def _open(model: Path, check: Check):
    from glimmer.runtime.backends.factory import open_backend

    return open_backend(
        model,
        check.backend,
        threads=check.threads,
        int8_kernels=check.int8_kernels,
        log=lambda line: None,
    )


def check_outputs(backend, what: str) -> None:
    """One blank frame through the backend and the model's task: an output that does not match
    the metadata (another class count, another head) is an ERROR here, where scoring it would
    report a plausible-looking FAIL."""
    import numpy as np

    from glimmer.runtime.core.preprocess import Preprocessor
    from glimmer.runtime.stream.pipeline import build_task

    meta = backend.meta
    h, w = meta.input_size
    batch, transforms = Preprocessor(meta)([np.zeros((h, w, 3), np.uint8)])
    outputs = backend.infer(batch.astype(np.dtype(backend.inputs[0].dtype), copy=False))
    try:
        build_task(meta)(outputs, transforms)
    except GlimmerError as exc:
        raise GlimmerError(f"{what}: {exc}") from None


def _note_int8(backend, role: str, details: Dict[str, Any]) -> None:
    """Record how an INT8 model was executed (fused or simulated, and why) under ``role``."""
    note = int8_note(backend)
    if note:
        details.setdefault("int8_execution", {})[role] = note


def _speed(check: Check, details: Dict[str, Any]) -> Dict[str, float]:
    from glimmer.runtime.core.preprocess import Preprocessor
    from glimmer.runtime.stream.pipeline import build_task
    from glimmer.runtime.tools.bench import end_to_end, open_bench_source, source_frames

    with _open(check.model, check) as backend:
        _note_int8(backend, "model", details)
        batch, _ = Preprocessor(backend.meta)(source_frames(check.data, 1))
        batch = batch.astype(backend.inputs[0].dtype, copy=False)
        for _ in range(check.warmup):  # first calls allocate and tune: not what a baseline means
            backend.infer(batch)
        report = end_to_end(
            backend,
            open_bench_source(check.data, check.frames),
            build_task(backend.meta),
            check.frames,
        )
    report.pop("samples_ms", None)
    details["speed"] = report
    return {
        "fps": float(report["throughput_fps"]),
        "p99_ms": float(report["stages"]["inference"]["p99_ms"]),
    }


def _accuracy(check: Check, details: Dict[str, Any]) -> Dict[str, float]:
    from glimmer.runtime.tools.evaluate import evaluate

    with _open(check.model, check) as backend:
        _note_int8(backend, "model", details)
        check_outputs(backend, f"model {check.model.name}")
        task = backend.meta.task
        wrong = [
            b
            for b in check.bounds
            if b in (DETECT_BOUNDS if task == "classify" else CLASSIFY_BOUNDS)
        ]
        if wrong:
            raise GlimmerError(f"{wrong[0]} does not apply to a {task} model ({check.model.name})")
        report = evaluate(backend, Path(check.data))
    details["accuracy"] = report
    measured = {
        k: float(report[k]) for k in ("accuracy", "f1_weighted", "map50", "map50_95") if k in report
    }
    if check.reference is not None:
        with _open(check.reference, check) as ref_backend:
            _note_int8(ref_backend, "reference", details)
            check_outputs(ref_backend, f"reference {check.reference.name}")
            if ref_backend.meta.task != task:
                raise GlimmerError(
                    f"reference {check.reference.name} is a {ref_backend.meta.task} model, "
                    f"{check.model.name} a {task} model"
                )
            ref = evaluate(ref_backend, Path(check.data))
        headline = HEADLINE[task]
        details["reference"] = ref
        measured["reference_" + headline] = float(ref[headline])
        measured["drop"] = float(ref[headline]) - measured[headline]
        measured["drop_metric"] = headline  # type: ignore[assignment]
    return measured


def _missing(check: Check) -> Optional[str]:
    for what, path in (("model", check.model), ("reference", check.reference)):
        if path is not None and not Path(path).is_file():
            return f"{what} {path}: no such file"
    data = check.data
    if (
        "://" not in data
        and not data.isdigit()
        and not data.startswith("/dev/")
        and not Path(data).exists()
    ):
        return f"data {data}: no such file or folder"
    return None


def run_check(
    check: Check, device: str, log: Callable[[str], None] = lambda line: None
) -> CheckResult:
    """Measure one check on this machine: PASS / FAIL rows, or one SKIPPED / ERROR row."""
    if check.device is not None and check.device != device:
        return CheckResult(
            check,
            [
                Row(
                    check.name,
                    "-",
                    "SKIPPED",
                    note=f"baseline belongs to device {check.device!r}; this machine is {device!r}",
                )
            ],
        )
    problem = _missing(check)
    if problem:
        return CheckResult(check, [Row(check.name, "-", "ERROR", note=problem)])
    details: Dict[str, Any] = {}
    log(f"check {check.name}: {check.kind} of {check.model.name} on {check.data}")
    try:
        measured = _speed(check, details) if check.kind == "speed" else _accuracy(check, details)
    except GlimmerError as exc:
        return CheckResult(check, [Row(check.name, "-", "ERROR", note=str(exc))])
    return CheckResult(check, judge(check, measured), measured, details)
