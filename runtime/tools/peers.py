"""The peer registry of glimmer-bench: other ways to run the same model, timed beside ours.

A peer is named on the command line (``--compare torch,onnx-naive=PATH,ultralytics``); ``NAME=ARG``
hands it an argument, usually a file. Peers are discovered through the entry-point group
``glimmer.bench_peers`` (importlib.metadata), so this module, which ships to the drone, never
imports torch or ultralytics: the peers that need them live in ``glimmer.export.bench_peers`` and
are only imported when named. As in Polygraphy's tool registry, a peer whose dependency is
missing still registers: it reports ``unavailable: <reason>`` in the table instead of crashing
the run. ``onnx-naive`` needs nothing but ONNX Runtime and lives here.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.timing import sample_ms

GROUP = "glimmer.bench_peers"
#: peers the documentation promises, so a missing registration reads as a reason, not a typo
KNOWN = ("torch", "onnx-naive", "ultralytics")


class PeerUnavailable(Exception):
    """Raised by a peer that cannot run here; the message is the reason shown in the table."""


@dataclass
class PeerContext:
    """What every peer gets, identical for all peers of one run.

    Attributes:
        model_path: the model under test (the ``.onnx`` or ``.engine`` given to ``--model``).
        meta: its metadata (task, classes, preprocessing, ``extra.config`` for rebuilding).
        batch: the preprocessed NCHW float32 input ours was timed on.
        frames: the BGR frames that batch was made from (for peers that preprocess themselves).
        warmup, iters: untimed and timed iterations.
        threads: intra-op threads ours used (None: the library's default).
    """

    model_path: Path
    meta: ModelMeta
    batch: np.ndarray
    frames: List[np.ndarray]
    warmup: int
    iters: int
    threads: Optional[int] = None


class Peer:
    """A way to run the model; subclasses set ``name``, ``scope`` and implement :meth:`prepare`.

    ``scope`` says what one timed iteration covers: ``model`` (inference alone on the shared
    preprocessed batch, compared with our model-only figure) or ``frame`` (the peer's own
    preprocess + inference + postprocess on the frames, compared with ours per frame).
    """

    name = "peer"
    scope = "model"
    label = ""

    def __init__(self, arg: Optional[str] = None) -> None:
        self.arg = arg

    def prepare(self, ctx: PeerContext) -> Callable[[], object]:
        """Load whatever is needed and return one iteration as a call; raise PeerUnavailable."""
        raise NotImplementedError

    def measure(self, ctx: PeerContext) -> List[float]:
        """Per-iteration latencies in ms, after ``ctx.warmup`` untimed calls."""
        return sample_ms(self.prepare(ctx), ctx.iters, ctx.warmup)


class OnnxNaivePeer(Peer):
    """The plain ONNX export (no BN folding, no dilation lowering) in ONNX Runtime, same threads."""

    name = "onnx-naive"
    scope = "model"
    label = "plain ONNX export, ONNX Runtime"

    def prepare(self, ctx: PeerContext) -> Callable[[], object]:
        if not self.arg:
            raise PeerUnavailable("give the plain export's file as onnx-naive=PATH.onnx")
        path = Path(self.arg)
        if not path.is_file():
            raise PeerUnavailable(f"{path}: no such file")
        try:
            from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend

            backend = OnnxRuntimeBackend(path, meta=ctx.meta, threads=ctx.threads).activate()
        except GlimmerError as exc:
            raise PeerUnavailable(str(exc)) from None
        backend.check_feed(ctx.batch)
        self.label = f"{path.name}, {backend.describe()}"
        return lambda: backend.infer(ctx.batch)


BUILTIN: Dict[str, Callable[[Optional[str]], Peer]] = {"onnx-naive": OnnxNaivePeer}


def _entry_points() -> Dict[str, object]:
    """name -> entry point of the group (importlib.metadata's API differs from 3.8 to 3.12)."""
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8 is not supported
        return {}
    found = metadata.entry_points()
    if hasattr(found, "select"):
        group = found.select(group=GROUP)
    else:  # Python 3.8-3.9: a dict of group -> entry points
        group = found.get(GROUP, ())  # type: ignore[union-attr]
    return {ep.name: ep for ep in group}


class _Unloadable(Peer):
    """A registered peer whose module failed to import: it reports why instead of crashing."""

    def __init__(self, name: str, reason: str, arg: Optional[str] = None) -> None:
        super().__init__(arg)
        self.name = name
        self.reason = reason

    def prepare(self, ctx: PeerContext) -> Callable[[], object]:
        raise PeerUnavailable(self.reason)


def discover() -> Dict[str, Callable[[Optional[str]], Peer]]:
    """Every known peer factory: the built-ins and the entry-point group (entry points win)."""
    peers: Dict[str, Callable[[Optional[str]], Peer]] = dict(BUILTIN)
    for name, ep in _entry_points().items():

        def factory(arg: Optional[str], ep=ep, name=name) -> Peer:
            try:
                cls = ep.load()  # type: ignore[attr-defined]
            except Exception as exc:  # an ImportError deep inside torch is still just a reason
                return _Unloadable(
                    name,
                    f"cannot import {ep.value}: "  # type: ignore[attr-defined]
                    f"{type(exc).__name__}: {exc}",
                    arg,
                )
            return cls(arg)

        peers[name] = factory
    return peers


def parse_compare(text: str) -> List[Tuple[str, Optional[str]]]:
    """``"torch,onnx-naive=a.onnx"`` -> [("torch", None), ("onnx-naive", "a.onnx")]."""
    items: List[Tuple[str, Optional[str]]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, arg = part.partition("=")
        items.append((name.strip(), arg.strip() or None))
    if not items:
        raise GlimmerError(
            "--compare: give peer names separated by commas, e.g. torch,onnx-naive=PATH"
        )
    return items


def make_peers(requested: List[Tuple[str, Optional[str]]]) -> List[Peer]:
    """Peer objects for the request; an unknown name is an error with did-you-mean, a known but
    unregistered one becomes an unavailable peer."""
    import difflib

    registry = discover()
    peers: List[Peer] = []
    for name, arg in requested:
        if name in registry:
            peers.append(registry[name](arg))
        elif name in KNOWN:
            peers.append(
                _Unloadable(
                    name,
                    f"not registered: install glimmer-edge with its export "
                    f"extra (entry-point group {GROUP})",
                    arg,
                )
            )
        else:
            close = difflib.get_close_matches(name, sorted(set(registry) | set(KNOWN)), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise GlimmerError(
                f"--compare: unknown peer {name!r}{hint}; known: "
                f"{', '.join(sorted(set(registry) | set(KNOWN)))}"
            )
    return peers


def run_peer(peer: Peer, ctx: PeerContext) -> Tuple[Optional[List[float]], str]:
    """(latencies, status): status is ``ok`` or ``unavailable: <reason>``."""
    try:
        return peer.measure(ctx), "ok"
    except PeerUnavailable as exc:
        return None, f"unavailable: {exc}"
    except GlimmerError as exc:
        return None, f"unavailable: {exc}"
    except MemoryError:
        raise
    except Exception as exc:  # a third-party runner failing is a row in the table, not a crash
        print(f"warning: peer {peer.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None, f"unavailable: {type(exc).__name__}: {exc}"
