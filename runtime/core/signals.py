"""SIGINT, SIGTERM and SIGHUP as requests to stop, not as exceptions in the middle of a frame.

``docker stop`` and systemd send SIGTERM, a closed SSH session sends SIGHUP; by default both kill
Python at once (no report, a video without its index), and SIGINT raises KeyboardInterrupt
wherever the main thread happens to be, possibly between one sink's write and the next. So a
command line installs :func:`stop_signals` for its whole run:

- while a pipeline runs it has registered a callback (:func:`route_stops`): the handler only
  calls it, the pipeline's drain loop sees the request between frames, stops reading, finishes
  the frames in flight, and the command writes its outputs and exits ``128 + signal``;
- before that (model load, engine build) there is nothing to finish: the handler raises
  :class:`Stopped`, a KeyboardInterrupt, which ends the command at once with the same code.

Handlers run on the main thread between bytecodes, so a callback must not take a lock the main
thread may hold: it sets plain attributes and nothing else.
"""

import contextlib
import signal
import threading
from typing import Callable, Dict, Iterator, List, Optional

#: what each signal is called in messages
NAMES: Dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
if hasattr(signal, "SIGHUP"):
    NAMES[signal.SIGHUP] = "SIGHUP"

_routes: List[Callable[[int], None]] = []
_installed = False


class Stopped(KeyboardInterrupt):
    """A stop signal outside a pipeline; ``exit_code`` is the shell's ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum
        self.exit_code = 128 + signum


def exit_code(signum: Optional[int]) -> int:
    """The exit status a shell reports for a process ended by ``signum`` (SIGINT: 130)."""
    return 128 + (signum or signal.SIGINT)


def describe(signum: Optional[int]) -> str:
    return NAMES.get(signum or signal.SIGINT, f"signal {signum}")


def _handler(signum: int, frame: object) -> None:
    if _routes:
        _routes[-1](signum)
        return
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Stop signals handled as described above, for the duration (the main thread only; elsewhere
    a no-op). The previous handlers come back afterwards."""
    global _installed
    if threading.current_thread() is not threading.main_thread() or _installed:
        yield
        return
    previous = {}
    try:
        for signum in NAMES:
            previous[signum] = signal.signal(signum, _handler)
        _installed = True
        yield
    finally:
        _installed = False
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def route_stops(callback: Callable[[int], None]) -> Iterator[bool]:
    """Deliver stop signals to ``callback`` for the duration; yields whether any will come.

    Under :func:`stop_signals` all three do. Without it (``glimmer.run`` from a script or a
    notebook) only SIGINT is taken over, and only where Python's default Ctrl-C handler is in
    place: an application's own handlers are left alone.
    """
    if _installed:
        _routes.append(callback)
        try:
            yield True
        finally:
            _routes.remove(callback)
        return
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield False
        return
    _routes.append(callback)
    signal.signal(signal.SIGINT, _handler)
    try:
        yield True
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _routes.remove(callback)
