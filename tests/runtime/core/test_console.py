"""glimmer.runtime.core.console: a user error (GlimmerError) is one line on stderr and exit
code 1."""

from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.errors import GlimmerError


def test_run_cli_turns_user_errors_into_one_line(capsys):
    def bad(argv):
        raise GlimmerError("--flag must be positive")

    assert run_cli("glimmer-x", bad, []) == 1
    assert capsys.readouterr().err == "glimmer-x: error: --flag must be positive\n"


def test_a_stop_signal_exits_128_plus_its_number_without_a_trace(capsys):
    import os
    import signal
    import time

    from glimmer.runtime.core.signals import stop_signals

    def terminated(argv):
        with stop_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler ends this at once
        return 0

    assert run_cli("glimmer-x", terminated, []) == 143
    assert capsys.readouterr().err == "glimmer-x: interrupted (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def ctrl_c(argv):
        raise KeyboardInterrupt

    assert run_cli("glimmer-x", ctrl_c, []) == 130
    assert capsys.readouterr().err == "glimmer-x: interrupted\n"


def test_a_closed_stdout_is_muted_not_fatal():
    """A real pipe whose reader has gone: the first write fails, stdout is pointed at the null
    device, later prints (and the flush at exit) succeed, exit 0."""
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from glimmer.runtime.core.console import say\n"
        "sys.stdin.readline()\n"  # the parent has closed its end of our stdout by now
        "results = [say('line %d' % i) for i in range(3)]\n"
        "print('after', flush=True)\n"
        "sys.stderr.write(repr(results))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    _, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0 and err == "[False, True, True]", err
