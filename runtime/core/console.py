"""Command-line plumbing shared by every ``glimmer-*`` entry point.

User errors (:class:`GlimmerError`) become one line on stderr and exit code 1; ``--verbose`` (or
``GLIMMER_VERBOSE=1``) shows the traceback; Ctrl-C exits 130 without a trace.
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
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


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
