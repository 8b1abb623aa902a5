"""Atomic file output: write to a temporary file beside the target, then rename.

A crash or a failed step never leaves a half-written artifact, and never replaces a good file with
a bad one (os.replace is atomic on POSIX within one filesystem).
"""

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(target: PathLike, follow_symlinks: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    For libraries that insist on writing by path (``torch.save``, ``onnx.save``). With
    ``follow_symlinks`` a symlinked ``target`` stays a link and the file it points to is replaced
    (the temporary then sits beside that file: a rename cannot cross filesystems), keeping its
    permissions: editing a file in place, not swapping in a new one.
    """
    target = Path(target)
    mode = None
    if follow_symlinks:
        target = Path(os.path.realpath(str(target)))
        with contextlib.suppress(OSError):
            mode = os.stat(str(target)).st_mode & 0o7777
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix="." + target.name + ".", suffix=".tmp", dir=str(target.parent)
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if mode is None:
            # mkstemp creates 0600; give the artifact the mode a plain open() would (0666 less
            # umask).
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(str(tmp_path), mode)
        os.replace(str(tmp_path), str(target))
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(target: PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_edit_text(target: PathLike, text: str) -> None:
    """Replace the contents of an existing file atomically: through a symlink (the link stays),
    with the file's permissions kept."""
    with atomic_path(target, follow_symlinks=True) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (engines and checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(str(path), "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
