"""``python -m glimmer.runtime.tools.doctor``: glimmer-doctor where the console script is not
installed."""

from glimmer.runtime.tools.doctor.cli import entry

if __name__ == "__main__":
    entry()
