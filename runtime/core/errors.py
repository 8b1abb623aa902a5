"""One exception type for user mistakes and environment problems.

The command lines catch it and print one line (no traceback); anything else is a bug and keeps its
traceback. Follows Polygraphy's `tools/_main.py` convention.
"""


class GlimmerError(Exception):
    """A problem the user can fix: a bad flag, a missing or malformed file, an absent device."""
