"""Typed settings keys, each checked with one error line: deploy.toml's own tables
(:mod:`glimmer.runtime.tools.config`, the checks' tables) and the sinks' sub-tables
(``[outputs.mavlink]``, ``[outputs.mqtt]``) share this, so every key in the file is checked and
worded the same way, whichever layer reads it.

The wording follows ultralytics' ``check_dict_alignment``: the key, what it must be, what it got,
and a did-you-mean (difflib) where a close name exists.
"""

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Tuple

from glimmer.runtime.core.errors import GlimmerError

#: what each kind must be, in error lines
KIND_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "path": "a path string",
    "output": "a path or an output URI string",
    "source": "a source URI string or a camera index",
    "table": "a table",
}


@dataclass(frozen=True)
class Key:
    """One typed key: ``kind`` is one of :data:`KIND_NAMES`."""

    kind: str
    default: Any = None
    choices: Optional[Tuple[str, ...]] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def type_name(value: Any) -> str:
    """A TOML value's type as TOML calls it."""
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _is(kind: str, value: Any) -> bool:
    integer = isinstance(value, int) and not isinstance(value, bool)
    return {
        "int": integer,
        "float": integer or isinstance(value, float),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "path": isinstance(value, str),
        "output": isinstance(value, str),
        "source": isinstance(value, str) or integer,
        "table": isinstance(value, dict),
    }[kind]


def check_key(value: Any, key: Key, where: str) -> Any:
    """``value`` checked against ``key`` (type, choices, range; an int is taken as a float), or a
    GlimmerError ``"{where} must be ..., got ..."``; ``where`` names the file and the key."""
    if not _is(key.kind, value):
        raise GlimmerError(
            f"{where} must be {KIND_NAMES[key.kind]}, got {type_name(value)} {value!r}"
        )
    if key.kind == "float":
        value = float(value)
    if key.choices is not None and value not in key.choices:
        raise GlimmerError(
            f"{where} must be one of {', '.join(key.choices)}, got "
            f"{value!r}{did_you_mean(str(value), key.choices)}"
        )
    if key.minimum is not None and value < key.minimum:
        raise GlimmerError(f"{where} must be at least {key.minimum:g}, got {value!r}")
    if key.maximum is not None and value > key.maximum:
        raise GlimmerError(f"{where} must be at most {key.maximum:g}, got {value!r}")
    return value
