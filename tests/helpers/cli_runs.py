"""Running glimmer-export and glimmer-train in this process, and reading their one error line."""

import io
from contextlib import redirect_stderr, redirect_stdout
from typing import Sequence, Tuple

EXPORT_ERROR = "glimmer-export: error: "


def export(argv: Sequence) -> int:
    """glimmer-export's exit code (its output goes where pytest captures it)."""
    from glimmer.export import cli
    from glimmer.runtime.core.console import run_cli

    return run_cli("glimmer-export", cli.main, [str(a) for a in argv])


def one_error_line(capsys) -> str:
    """glimmer-export's one error line (progress lines may precede it; never a traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith(EXPORT_ERROR)]
    assert (
        len(errors) == 1 and err[-1] == errors[0] and not any("Traceback" in line for line in err)
    ), err
    return errors[0]


def train(argv: Sequence) -> Tuple[int, str, str]:
    """(exit code, stdout, stderr) of glimmer-train in this process."""
    from glimmer.runtime.core.console import run_cli
    from glimmer.train.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = run_cli("glimmer-train", main, [str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def error_line(err: str) -> str:
    """The one visible line of glimmer-train's stderr (a cleared progress bar leaves only carriage
    returns behind)."""
    lines = [line.split("\r")[-1] for line in err.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
