"""Checkpoints: our self-describing format, the reference implementation's Lightning ``.ckpt``,
and sniffing which kind a file is without unpickling code.

Our file is a plain dict (tensors and primitives only, so ``torch.load(weights_only=True)`` reads
it): ``format``, ``version``, ``arch``, ``config`` (GlimmerConfig), ``class_names``, ``input_size``,
``preprocess`` (channel order, scale, mean/std), ``state_dict``, ``provenance`` (dataset, epoch,
metrics) and, in a training run's ``last.pt``, ``train_state`` for resuming. A checkpoint from
quantisation-aware training (``glimmer-train --qat-from``) adds ``qat``: the fixed activation ranges
it was trained with, by training-module name (see :data:`QAT_KEYS`), so the INT8 export reuses them.
"""

import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_path, sha256_file
from glimmer.runtime.core.metadata import ModelMeta

from .glimmernet import AIDER_CLASSES, ARCHS, GlimmerConfig, GlimmerNet

FORMAT = "glimmer-checkpoint"
VERSION = 1
DEFAULT_PREPROCESS = {"channel_order": "RGB", "scale": 1.0 / 255.0, "mean": None, "std": None}
#: ``qat`` entry: ``activation_amax`` {module name: max|x|}, ``weight_bits`` (2-8), ``calibration``
#: (how the ranges were measured, e.g. "max"), ``images`` (calibration images), ``epochs`` (of QAT).
QAT_KEYS = ("activation_amax", "weight_bits", "calibration", "images", "epochs")


@dataclass
class Checkpoint:
    """A loaded classifier checkpoint, ready to deploy."""

    model: GlimmerNet
    arch: str
    class_names: List[str]
    input_size: Tuple[int, int]
    preprocess: Dict[str, Any]
    provenance: Dict[str, Any]
    kind: str  # "glimmer" or "reference"
    path: Optional[Path] = None
    sha256: str = ""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    qat: Optional[Dict[str, Any]] = None  # the ``qat`` entry of a quantisation-aware checkpoint

    def meta(self, **overrides: Any) -> ModelMeta:
        """Runtime metadata for artifacts exported from this checkpoint."""
        values: Dict[str, Any] = dict(
            task="classify",
            name=self.arch,
            class_names=self.class_names,
            input_size=self.input_size,
            channel_order=self.preprocess.get("channel_order", "RGB"),
            scale=float(self.preprocess.get("scale", 1.0 / 255.0)),
            mean=self.preprocess.get("mean"),
            std=self.preprocess.get("std"),
            source_sha256=self.sha256,
            extra={"arch": self.arch, "config": self.model.config.to_dict()},
        )
        values.update(overrides)
        return ModelMeta(**values)


def sniff_kind(path: Path) -> str:
    """``glimmer``, ``reference``, ``ultralytics`` or ``unknown``, from the pickle's bytes only.

    A torch ``.pt`` is a zip whose ``data.pkl`` names the classes it would import; reading those
    bytes needs no unpickling, so an untrusted file runs no code here.
    """
    try:
        with zipfile.ZipFile(str(path)) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if pkl is None:
                return "unknown"
            blob = zf.read(pkl)
    except (zipfile.BadZipFile, OSError, EOFError):
        return "unknown"
    if b"ultralytics.nn" in blob:
        return "ultralytics"
    if FORMAT.encode() in blob:
        return "glimmer"
    if b"backbone.0.stem" in blob:
        return "reference"
    return "unknown"


def _torch_load(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise GlimmerError(f"{path}: no such file")
    if not zipfile.is_zipfile(str(path)):
        raise GlimmerError(
            f"{path}: not a PyTorch checkpoint (not a zip archive: truncated, or another format)"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (
        Exception
    ) as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = f"it pickles Python objects, which are not loaded for safety ({reason[:160]})"
        raise GlimmerError(f"{path}: not a readable checkpoint: {reason}") from None
    if not isinstance(obj, dict):
        raise GlimmerError(f"{path}: not a checkpoint (a {type(obj).__name__} rather than a dict)")
    return obj


def save_checkpoint(
    path: Path,
    model: GlimmerNet,
    arch: str,
    class_names: Sequence[str],
    input_size: Tuple[int, int],
    provenance: Optional[Dict[str, Any]] = None,
    preprocess: Optional[Dict[str, Any]] = None,
    train_state: Optional[Dict[str, Any]] = None,
    qat: Optional[Dict[str, Any]] = None,
) -> None:
    """Write our checkpoint atomically (``qat``: the entry of :data:`QAT_KEYS`, for QAT runs)."""
    if len(class_names) != model.config.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a {model.config.num_classes}-class model"
        )
    payload: Dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "config": model.config.to_dict(),
        "class_names": list(class_names),
        "input_size": [int(input_size[0]), int(input_size[1])],
        "preprocess": dict(preprocess or DEFAULT_PREPROCESS),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "provenance": dict(provenance or {}),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    if qat is not None:
        payload["qat"] = check_qat(qat, model, Path(path))
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, str(tmp))


def load_checkpoint(path: Path, dilations: Optional[Sequence[int]] = None) -> Checkpoint:
    """Load our checkpoint or a reference ``.ckpt``; the kind is detected, not flagged.

    Args:
        dilations: only for reference checkpoints without hyper-parameters, whose weights cannot
            tell the dilations (every GD conv is 3x3); default (1, 2, 2, 3).
    """
    path = Path(path)
    raw = _torch_load(path)
    if raw.get("format") == FORMAT:
        ck = _from_ours(raw, path)
    elif isinstance(raw.get("state_dict"), Mapping) and _find_prefix(raw["state_dict"]) is not None:
        ck = _from_reference(raw, path, dilations)
    else:
        raise GlimmerError(
            f"{path}: not a GlimmerNet checkpoint (neither glimmer-train's format nor a reference "
            "Lightning .ckpt with backbone.* keys)"
        )
    ck.path = path
    ck.sha256 = sha256_file(path)
    return ck


def _from_ours(raw: Dict[str, Any], path: Path) -> Checkpoint:
    for key in ("arch", "config", "class_names", "input_size", "state_dict"):
        if key not in raw:
            raise GlimmerError(f"{path}: checkpoint key {key!r} is missing")
    if int(raw.get("version", 0)) > VERSION:
        raise GlimmerError(
            "{}: checkpoint version {} is newer than this toolkit reads ({})".format(
                path, raw["version"], VERSION
            )
        )
    if raw["arch"] not in ARCHS:
        raise GlimmerError("{}: unknown arch {!r}".format(path, raw["arch"]))
    try:
        model = GlimmerNet(config=GlimmerConfig.from_dict(dict(raw["config"])))
    except (TypeError, ValueError) as exc:
        raise GlimmerError(f"{path}: bad checkpoint key 'config': {exc}") from None
    _load_state(model, raw["state_dict"], path)
    qat = check_qat(raw["qat"], model, path) if "qat" in raw else None
    return Checkpoint(
        model=model.eval(),
        arch=raw["arch"],
        class_names=list(raw["class_names"]),
        input_size=(int(raw["input_size"][0]), int(raw["input_size"][1])),
        preprocess=dict(raw.get("preprocess") or DEFAULT_PREPROCESS),
        provenance=dict(raw.get("provenance") or {}),
        kind="glimmer",
        raw=raw,
        qat=qat,
    )


def check_qat(qat: Any, model: GlimmerNet, path: Path) -> Dict[str, Any]:
    """The ``qat`` entry, checked against ``model``; anything malformed is a GlimmerError naming it.

    A wrong range would only show up as a silently worse INT8 model, so it fails here instead.
    """

    def bad(why: str) -> GlimmerError:
        return GlimmerError(f"{path}: bad checkpoint key 'qat': {why}")

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(qat, Mapping):
        raise bad(f"a {type(qat).__name__}, not a dict")
    missing = [k for k in QAT_KEYS if k not in qat]
    if missing:
        raise bad(f"entry {missing[0]!r} is missing")
    ranges = qat["activation_amax"]
    if not isinstance(ranges, Mapping) or not ranges:
        raise bad("'activation_amax' must map module names to ranges")
    modules = dict(model.named_modules())
    for name, value in ranges.items():
        if name not in modules:
            raise bad(f"'activation_amax' names {name!r}, which is no module of this model")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise bad(f"'activation_amax' of {name!r} is {value!r}, not a finite range >= 0")
    bits = qat["weight_bits"]
    if not count(bits) or not 2 <= bits <= 8:
        raise bad(f"'weight_bits' is {bits!r}, not 2 to 8")
    if not isinstance(qat["calibration"], str):
        raise bad(f"'calibration' is {qat['calibration']!r}, not a name")
    for key in ("images", "epochs"):
        if not count(qat[key]):
            raise bad(f"{key!r} is {qat[key]!r}, not a count")
    return dict(qat, activation_amax={str(k): float(v) for k, v in ranges.items()})


def _load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Strict load whose errors name the offending key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise GlimmerError(f"{path}: state_dict is missing key {missing[0]!r}")
    if unexpected:
        raise GlimmerError(f"{path}: state_dict has unexpected key {unexpected[0]!r}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise GlimmerError(
                f"{path}: key {key!r} has shape {list(value.shape)}, "
                f"the model expects {list(own[key].shape)}"
            )
    model.load_state_dict(state, strict=True)


# ---- the reference implementation's Lightning checkpoint --------------------------------------

_REF_STEM = {"0": "stem.conv.0", "1": "stem.conv.1", "3": "stem.dw.0", "4": "stem.dw.1"}


def _find_prefix(state: Mapping[str, Any]) -> Optional[str]:
    """The LightningModule attribute prefix (e.g. ``model.``) in front of ``backbone.0.stem``."""
    for key in state:
        idx = key.find("backbone.0.stem.")
        if idx >= 0:
            return key[:idx]
    return None


def _map_reference_key(key: str) -> Optional[str]:
    """Reference key (prefix stripped) -> our key; None for keys that duplicate others."""
    m = re.match(r"backbone\.0\.stem\.(\d+)\.(.+)$", key)
    if m:
        if m.group(1) not in _REF_STEM:
            raise KeyError(key)
        return f"{_REF_STEM[m.group(1)]}.{m.group(2)}"
    m = re.match(r"backbone\.(\d+)\.(layers|stage)\.(\d+)\.(convs\.\d+|bn)\.(.+)$", key)
    if m:
        if m.group(2) == "stage":  # the same tensors under a second container
            return None
        inner = "conv." + m.group(4) if m.group(4).startswith("convs") else "bn"
        return f"stages.{int(m.group(1)) - 1}.blocks.{m.group(3)}.{inner}.{m.group(5)}"
    m = re.match(r"backbone\.(\d+)\.aggregate_downsample\.(dense_fc|batch_norm|grn)\.(.+)$", key)
    if m:
        stage = int(m.group(1)) - 1
        part = {
            "dense_fc": "aggregator.pw.0",
            "batch_norm": "aggregator.pw.1",
            "grn": "downsample.grn",
        }
        return f"stages.{stage}.{part[m.group(2)]}.{m.group(3)}"
    m = re.match(r"refiner\.([01])\.(.+)$", key)
    if m:
        return "refiner.{}.{}".format("conv" if m.group(1) == "0" else "bn", m.group(2))
    m = re.match(r"classifier\.2\.(weight|bias)$", key)
    if m:
        return "head.fc." + m.group(1)
    raise KeyError(key)


def _reference_config(
    state: Mapping[str, torch.Tensor],
    hparams: Mapping[str, Any],
    dilations: Optional[Sequence[int]],
    path: Path,
) -> GlimmerConfig:
    stages = sorted(
        {int(m.group(1)) for m in (re.match(r"backbone\.(\d+)\.layers\.", k) for k in state) if m}
    )
    if not stages or "classifier.2.weight" not in state:
        raise GlimmerError(
            f"{path}: reference checkpoint lacks backbone.N.layers.* or classifier.2.weight"
        )
    depths, widths, groups = [], [], 0
    for s in stages:
        blocks = {
            int(m.group(1))
            for m in (re.match(rf"backbone\.{s}\.layers\.(\d+)\.", k) for k in state)
            if m
        }
        convs = sorted(
            {
                int(m.group(1))
                for m in (
                    re.match(rf"backbone\.{s}\.layers\.0\.convs\.(\d+)\.weight", k) for k in state
                )
                if m
            }
        )
        depths.append(max(blocks) + 1)
        widths.append(
            sum(int(state[f"backbone.{s}.layers.0.convs.{i}.weight"].shape[0]) for i in convs)
        )
        groups = len(convs)
    pw_key = f"backbone.{stages[0]}.aggregate_downsample.dense_fc.weight"
    if pw_key not in state:
        raise GlimmerError(f"{path}: reference checkpoint lacks key {pw_key!r}")
    dil = tuple(
        dilations or hparams.get("dilations") or ((1, 2, 2, 3) if groups == 4 else (1,) * groups)
    )
    if len(dil) != groups:
        raise GlimmerError(
            f"{path}: {len(dil)} dilations given for {groups} conv groups per GDBlock"
        )
    try:
        return GlimmerConfig(
            num_classes=int(state["classifier.2.weight"].shape[0]),
            depths=tuple(depths),
            widths=tuple(widths),
            dilations=dil,
            recombine=groups > 1,
            pw_group_inputs=int(state[pw_key].shape[1]),
        )
    except ValueError as exc:
        raise GlimmerError(
            f"{path}: reference checkpoint describes no valid GlimmerNet: {exc}"
        ) from None


def _from_reference(
    raw: Dict[str, Any], path: Path, dilations: Optional[Sequence[int]]
) -> Checkpoint:
    prefix = _find_prefix(raw["state_dict"]) or ""
    state = {k[len(prefix) :]: v for k, v in raw["state_dict"].items() if k.startswith(prefix)}
    hparams = (
        raw.get("hyper_parameters") if isinstance(raw.get("hyper_parameters"), Mapping) else {}
    )
    config = _reference_config(state, hparams, dilations, path)
    model = GlimmerNet(config=config)
    own = model.state_dict()
    mapped: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        try:
            ours = _map_reference_key(key)
        except KeyError:
            raise GlimmerError(
                f"{path}: unexpected key {prefix + key!r} in the reference checkpoint"
            ) from None
        if ours is None:
            continue
        if (
            ours in own
            and ours.endswith(("grn.gamma", "grn.beta"))
            and value.numel() == own[ours].numel()
        ):
            value = value.reshape(
                own[ours].shape
            )  # the reference may keep GRN params channels-last
        if ours in own and tuple(value.shape) != tuple(own[ours].shape):
            raise GlimmerError(
                f"{path}: key {prefix + key!r} has shape {list(value.shape)}, "
                f"the model expects {list(own[ours].shape)}"
            )
        mapped[ours] = value
    missing = [k for k in own if k not in mapped]
    if missing:
        raise GlimmerError(f"{path}: reference checkpoint has no tensor for {missing[0]!r}")
    model.load_state_dict(mapped, strict=True)
    names = hparams.get("class_names") or (
        list(AIDER_CLASSES)
        if config.num_classes == 4
        else [f"class{i}" for i in range(config.num_classes)]
    )
    size = int(hparams.get("img_size", hparams.get("input_size", 224)) or 224)
    provenance = {
        "source": "reference Lightning checkpoint",
        "epoch": raw.get("epoch"),
        "global_step": raw.get("global_step"),
    }
    return Checkpoint(
        model=model.eval(),
        arch="glimmernet" if config.recombine else "takunet",
        class_names=[str(n) for n in names],
        input_size=(size, size),
        preprocess=dict(DEFAULT_PREPROCESS),
        provenance=provenance,
        kind="reference",
        raw=raw,
    )


def reference_state_dict(model: GlimmerNet, prefix: str = "model.") -> Dict[str, torch.Tensor]:
    """Our weights laid out like the reference ``.ckpt`` (both containers), for tests and
    interop."""
    inverse: Dict[str, str] = {}
    for key in model.state_dict():
        for ref_key in _candidate_reference_keys(model, key):
            inverse[ref_key] = key
    out: Dict[str, torch.Tensor] = {}
    own = model.state_dict()
    for ref_key, key in inverse.items():
        out[prefix + ref_key] = own[key].clone()
        m = re.match(r"backbone\.(\d+)\.layers\.(.+)$", ref_key)
        if m:
            out[prefix + f"backbone.{m.group(1)}.stage.{m.group(2)}"] = own[key].clone()
    return out


def _candidate_reference_keys(model: GlimmerNet, key: str) -> List[str]:
    rev_stem = {v: k for k, v in _REF_STEM.items()}
    m = re.match(r"(stem\.(?:conv|dw)\.\d)\.(.+)$", key)
    if m:
        return [f"backbone.0.stem.{rev_stem[m.group(1)]}.{m.group(2)}"]
    m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(conv\.convs\.\d+|bn)\.(.+)$", key)
    if m:
        inner = m.group(3)[len("conv.") :] if m.group(3).startswith("conv.") else "bn"
        return [f"backbone.{int(m.group(1)) + 1}.layers.{m.group(2)}.{inner}.{m.group(4)}"]
    m = re.match(
        r"stages\.(\d+)\.(aggregator\.pw\.0|aggregator\.pw\.1|downsample\.grn)\.(.+)$", key
    )
    if m:
        part = {
            "aggregator.pw.0": "dense_fc",
            "aggregator.pw.1": "batch_norm",
            "downsample.grn": "grn",
        }
        return [
            f"backbone.{int(m.group(1)) + 1}.aggregate_downsample.{part[m.group(2)]}.{m.group(3)}"
        ]
    m = re.match(r"refiner\.(conv|bn)\.(.+)$", key)
    if m:
        return ["refiner.{}.{}".format("0" if m.group(1) == "conv" else "1", m.group(2))]
    m = re.match(r"head\.fc\.(weight|bias)$", key)
    if m:
        return ["classifier.2." + m.group(1)]
    raise KeyError(key)
