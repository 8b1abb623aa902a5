"""deploy.toml: the deployment profile's defaults for glimmer-run; command-line flags override it.

    [model]     path, backend (auto|onnxruntime|tensorrt), cache_dir, threads,
                int8_kernels (auto|fused|simulated: INT8 on ONNX Runtime's CPU EP),
                imgsz, half, device, cuda_graph, dla_core (ultralytics' names where it has them)
    [runtime]   source (URI or camera index), width, height, rate, loop, flip, max_frames,
                duration, show, print_interval, schedule (auto|latency|throughput),
                stall_timeout, reconnects, connect_timeout (live streams)
    [outputs]   output (JSON lines or CSV), format (jsonl|csv), save (a video path or an output
                URI), report; the keys carry their flags' names (--output, --save, --report);
                sub-tables [outputs.mavlink] and [outputs.mqtt] are handed
                on as read (a dict), validated by the modules that use them
    [classify]  top_k, smoothing, normal_class, alert_threshold, alert_frames
    [detect]    conf, iou, max_det, agnostic
    [checks]    reserved for the regression checks (glimmer-check): accepted, handed on unvalidated

Every key is typed; an unknown key or a wrong type is an error naming the key, with a did-you-mean
suggestion for a misspelling (difflib), as ultralytics' ``check_dict_alignment`` does. Relative
paths are relative to the file's folder, so a profile works from any working directory. Reads with
``tomllib`` (Python 3.11+) or ``tomli`` (3.8-3.10, the same parser).
"""

from pathlib import Path
from typing import Any, Dict, Optional

from glimmer.runtime.backends.ort.int8 import INT8_KERNELS
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.settings import Key, check_key, did_you_mean, type_name
from glimmer.runtime.stream.capture import FLIPS
from glimmer.runtime.stream.records import FORMATS
from glimmer.runtime.stream.schedule import SCHEDULES

BACKENDS = ("auto", "onnxruntime", "tensorrt")


SCHEMA: Dict[str, Dict[str, Key]] = {
    "model": {
        "path": Key("path"),
        "backend": Key("str", "auto", BACKENDS),
        "cache_dir": Key("path"),
        "threads": Key("int", None, minimum=1),
        "int8_kernels": Key("str", "auto", INT8_KERNELS),
        "imgsz": Key("int", None, minimum=1),
        "half": Key("bool", False),
        "device": Key("str"),
        "cuda_graph": Key("bool", True),
        "dla_core": Key("int", None, minimum=0),
    },
    "runtime": {
        "source": Key("source"),
        "width": Key("int", None, minimum=1),
        "height": Key("int", None, minimum=1),
        "rate": Key("float", None, minimum=0.1),
        "loop": Key("int", 1, minimum=0),
        "flip": Key("str", "none", FLIPS),
        "max_frames": Key("int", None, minimum=1),
        "duration": Key("float", None, minimum=0.0),
        "show": Key("bool", False),
        "print_interval": Key("float", 1.0, minimum=0.0),
        "schedule": Key("str", "auto", SCHEDULES),
        "stall_timeout": Key("float", 5.0, minimum=0.1),
        "reconnects": Key("int", 5, minimum=0),
        "connect_timeout": Key("float", 10.0, minimum=0.1),
    },
    "outputs": {
        "output": Key("path"),
        "save": Key("output"),
        "report": Key("path"),
        "format": Key("str", None, FORMATS),
        "mavlink": Key("table"),
        "mqtt": Key("table"),
    },
    "classify": {
        "top_k": Key("int", 3, minimum=1),
        "smoothing": Key("float", 0.6, minimum=0.0, maximum=0.99),
        # None: a class named Normal if the model has one; "": none exempt
        "normal_class": Key("str", None),
        "alert_threshold": Key("float", 0.7, minimum=0.0, maximum=1.0),
        "alert_frames": Key("int", 5, minimum=1),
    },
    "detect": {
        "conf": Key("float", 0.25, minimum=0.0, maximum=1.0),
        "iou": Key("float", 0.45, minimum=0.0, maximum=1.0),
        "max_det": Key("int", 300, minimum=1),
        "agnostic": Key("bool", False),
    },
}
RESERVED = ("checks",)
# Keys renamed to their flags' names (one vocabulary for flags and keys): an old profile is told
# the new name instead of "unknown key".
RENAMED = {"outputs.jsonl": "outputs.output", "outputs.video": "outputs.save"}


def check_value(dotted: str, key: Key, value: Any, origin: str, base: Optional[Path] = None) -> Any:
    """``value`` converted to the key's type, or an error naming ``dotted``; a table is handed on
    as read."""
    if key.kind == "table" and not isinstance(value, dict):
        section, _, name = dotted.partition(".")
        raise GlimmerError(
            f"{origin}: key {dotted!r} must be a table ([{section}.{name}]), got "
            f"{type_name(value)} {value!r}"
        )
    value = check_key(value, key, f"{origin}: key {dotted!r}")
    if key.kind == "path" and base is not None:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if key.kind == "output" and base is not None and "://" not in value:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)
    if key.kind == "source" and isinstance(value, int):
        return str(value)
    return value


class DeployConfig:
    """Validated settings: ``config["classify.alert_frames"]``; ``checks`` holds [checks] as
    read."""

    def __init__(
        self,
        values: Optional[Dict[str, Dict[str, Any]]] = None,
        checks: Any = None,
        path: Optional[Path] = None,
    ) -> None:
        self.values = {
            section: {name: key.default for name, key in keys.items()}
            for section, keys in SCHEMA.items()
        }
        for section, items in (values or {}).items():
            self.values[section].update(items)
        self.checks = checks
        self.path = path

    def __getitem__(self, dotted: str) -> Any:
        section, name = dotted.split(".", 1)
        return self.values[section][name]

    def section(self, name: str) -> Dict[str, Any]:
        return dict(self.values[name])

    def override(self, dotted: str, value: Any, origin: str = "command line") -> None:
        """Set ``dotted`` from a flag (flags win over the file); ``None`` leaves the file's
        value."""
        if value is None:
            return
        section, name = dotted.split(".", 1)
        self.values[section][name] = check_value(dotted, SCHEMA[section][name], value, origin)


def _read_toml(path: Path) -> Dict[str, Any]:
    try:
        import tomllib  # novermin  (Python 3.11+; tomli below otherwise)
    except ImportError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise GlimmerError(
                f"{path}: reading TOML on Python < 3.11 needs tomli (pip install tomli)"
            ) from None
    try:
        with open(str(path), "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise GlimmerError(f"--config {path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise GlimmerError(not_utf8(path, exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise GlimmerError(f"{path}: not valid TOML: {exc}") from None


def not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """The one line for a profile saved in another encoding (TOML is UTF-8 by definition)."""
    line = exc.object[: exc.start].count(b"\n") + 1 if isinstance(exc.object, bytes) else "?"
    return (
        f"{path}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} on line {line}); TOML files must "
        "be UTF-8: save it as UTF-8"
    )


def load_config(path: Path) -> DeployConfig:
    """Read and validate a deploy.toml; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise GlimmerError(f"--config {path}: no such file")
    raw = _read_toml(path)
    origin, base = str(path), path.resolve().parent
    values: Dict[str, Dict[str, Any]] = {}
    for section, table in raw.items():
        if section in RESERVED:
            continue
        if section not in SCHEMA:
            raise GlimmerError(
                f"{origin}: unknown key {section!r}"
                f"{did_you_mean(section, list(SCHEMA) + list(RESERVED))}"
            )
        if not isinstance(table, dict):
            raise GlimmerError(
                f"{origin}: key {section!r} must be a table ([{section}]), got {type_name(table)}"
            )
        keys = SCHEMA[section]
        values[section] = {}
        for name, value in table.items():
            dotted = f"{section}.{name}"
            if dotted in RENAMED:
                raise GlimmerError(
                    f"{origin}: key {dotted!r} is now {RENAMED[dotted]!r}, the name of its flag"
                )
            if name not in keys:
                suggestion = did_you_mean(name, keys)
                if not suggestion:  # a key put in the wrong table
                    homes = [f"{s}.{name}" for s, k in SCHEMA.items() if name in k]
                    suggestion = f" (did you mean {homes[0]!r}?)" if homes else ""
                else:
                    suggestion = suggestion.replace("'", f"'{section}.", 1)
                raise GlimmerError(f"{origin}: unknown key {dotted!r}{suggestion}")
            values[section][name] = check_value(dotted, keys[name], value, origin, base)
    return DeployConfig(values, raw.get("checks"), path)
