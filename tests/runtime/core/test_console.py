"""glimmer.runtime.core.console: a user error (GlimmerError) is one line on stderr and exit
code 1."""

from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.errors import GlimmerError


def test_run_cli_turns_user_errors_into_one_line(capsys):
    def bad(argv):
        raise GlimmerError("--flag must be positive")

    assert run_cli("glimmer-x", bad, []) == 1
    assert capsys.readouterr().err == "glimmer-x: error: --flag must be positive\n"
