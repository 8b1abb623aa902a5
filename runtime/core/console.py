"""Command-line plumbing shared by every ``glimmer-*`` entry point.

User errors (:class:`GlimmerError`) become one line on stderr and exit code 1; ``--verbose`` (or
``GLIMMER_VERBOSE=1``) shows the traceback; Ctrl-C exits 130 without a trace (SIGTERM 143 and
SIGHUP 129 where a command handles them, see signals.py). A reader that goes away (``| head``)
mutes stdout instead of ending the run: the files a run writes matter more than its console.
"""

import argparse
import os
import sys
import traceback
from typing import Callable, List, Optional

from glimmer.runtime.core.errors import GlimmerError


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show tracebacks for errors")


def run_cli(
    prog: str, main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None
) -> int:
    """Run ``main(argv)`` and turn user errors into one line and a non-zero exit code."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or os.environ.get("GLIMMER_VERBOSE") == "1"
    try:
        return int(main(args) or 0)
    except GlimmerError as exc:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        code = int(getattr(exc, "exit_code", 130))
        print(f"{prog}: interrupted{f' ({exc})' if code != 130 else ''}", file=sys.stderr)
        return code
    except BrokenPipeError:
        mute_stdout()
        return 0


def mute_stdout() -> None:
    """Point stdout at the null device once its reader has gone, so that later prints (and the
    interpreter's flush at exit) neither fail nor end the run. Python's documented advice for
    SIGPIPE: https://docs.python.org/3/library/signal.html#note-on-sigpipe
    """
    try:
        fileno = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a non-file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fileno)
    finally:
        os.close(devnull)


def say(text: str = "", stream=None) -> bool:
    """Print a line; False (and stdout muted) when its reader has gone."""
    stream = stream if stream is not None else sys.stdout
    try:
        stream.write(text + "\n")
        stream.flush()
        return True
    except BrokenPipeError:
        if stream is sys.stdout:
            mute_stdout()
        return False


class StatusLine:
    """A single live status line on a terminal (carriage return, no scrolling); silent elsewhere."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._width = 0

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
