"""Output files checked before a run starts, and one writer per output.

Two failures this prevents. An output that is also an input (``--output model.onnx``) would
replace the model with JSON lines, and an output in a read-only folder would fail only after the
whole run; both are caught by :func:`preflight` before any model load, engine build or frame. Two
runs writing the same file would interleave their lines; :class:`OutputLock` lets only one of
them start, and names the other.

The lock is an OS lock (``fcntl.flock``; ``msvcrt.locking`` on Windows) on a small file beside the
output, ``.NAME.lock``, which holds the owner's pid and command line. The OS releases it when the
owner dies however it dies (SIGKILL, power loss), so a stale lock file never blocks a later run.
"""

import errno
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from glimmer.runtime.core.errors import GlimmerError

PathLike = Union[str, "os.PathLike[str]"]
#: (flag, path) pairs: ``("--output", Path("r.jsonl"))``
Named = Sequence[Tuple[str, PathLike]]

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _same(a: Path, b: Path) -> bool:
    """One file under two names: equal real paths, or (both existing) the same inode."""
    if os.path.realpath(str(a)) == os.path.realpath(str(b)):
        return True
    try:
        return os.path.samefile(str(a), str(b))
    except OSError:
        return False


def is_special(path: Path) -> bool:
    """An existing device, FIFO or socket (``--output /dev/stdout``): written as it is, with no
    temporary beside it and no lock."""
    try:
        return stat.S_IFMT(os.stat(str(path)).st_mode) in (
            stat.S_IFCHR,
            stat.S_IFIFO,
            stat.S_IFSOCK,
        )
    except OSError:
        return False


def _check_folder(flag: str, path: Path) -> None:
    """The output's folder exists (created if needed) and takes a new file: probed, not guessed
    from permission bits (a read-only mount, ACLs and root all defeat ``os.access``)."""
    if path.is_dir():
        raise GlimmerError(f"{flag} {path}: is a folder, give a file name")
    if is_special(path):
        return
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=str(folder))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GlimmerError(
            f"{flag} {path}: cannot write in {folder}: {exc.strerror or exc}"
        ) from None


def preflight(outputs: Named, inputs: Named) -> None:
    """Refuse, in one line naming both flags, an output that is an input or another output; and
    an output whose folder cannot take a new file. ``None`` paths are ignored."""
    outs = [(flag, Path(p)) for flag, p in outputs if p is not None]
    ins = [(flag, Path(p)) for flag, p in inputs if p is not None]
    for i, (flag, path) in enumerate(outs):
        for other_flag, other in ins:
            if _same(path, other):
                raise GlimmerError(
                    f"{flag} {path} is the {other_flag} {other}: it would be overwritten; "
                    "give another file name"
                )
        for other_flag, other in outs[:i]:
            if _same(path, other):
                raise GlimmerError(
                    f"{flag} {path} and {other_flag} {other} are the same file; give each "
                    "output its own name"
                )
    for flag, path in outs:
        _check_folder(flag, path)


def lock_path(output: PathLike) -> Path:
    """The lock file of ``output``: hidden, beside it."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def _holder(text: str) -> str:
    """``pid N (command)`` from a lock file's text, the command from /proc when it is there."""
    lines = text.splitlines()
    pid = lines[0].strip() if lines else ""
    if not pid.isdigit():
        return "another process (pid unknown)"
    command = lines[1].strip() if len(lines) > 1 else ""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            live = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        command = live or command
    except OSError:
        pass
    return f"pid {pid}" + (f" ({command})" if command else "")


class OutputLock:
    """Held while one process writes ``output``; a second process is refused with a line naming
    the first (``flag`` is the option the user gave, for the message)."""

    def __init__(self, output: PathLike, flag: str) -> None:
        self.output = Path(output)
        self.flag = flag
        self.path = lock_path(self.output)
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputLock":
        for _ in range(5):  # a file unlinked by its previous owner between our open and lock
            try:
                fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise GlimmerError(
                    f"{self.flag} {self.output}: cannot create its lock file {self.path}: "
                    f"{exc.strerror or exc}"
                ) from None
            if not _try_lock(fd):
                text = ""
                try:
                    text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                except (AttributeError, OSError):  # no pread on Windows
                    pass
                os.close(fd)
                raise GlimmerError(
                    f"{self.flag} {self.output}: another run is writing it ({_holder(text)}); "
                    "stop it or give another file name"
                )
            try:
                current = os.stat(str(self.path))
                mine = os.fstat(fd)
                same = (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)
            except OSError:
                same = False
            if sys.platform == "win32" or same:
                break
            _unlock(fd)
            os.close(fd)
        else:  # pragma: no cover - needs a lock file replaced five times in a row
            raise GlimmerError(f"{self.flag} {self.output}: cannot take its lock {self.path}")
        try:  # who holds it, for the message a second run prints; the lock works without it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{' '.join(sys.argv)}\n".encode("utf-8", "replace"))
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(str(self.path))  # while still held: a waiting opener then retries
        except OSError:
            pass
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_outputs(outputs: Named) -> List[OutputLock]:
    """One held lock per output (``None`` paths ignored); all released if one is refused."""
    held: List[OutputLock] = []
    try:
        for flag, path in outputs:
            if path is not None and not is_special(Path(path)):
                held.append(OutputLock(path, flag).acquire())
    except BaseException:
        release_all(held)
        raise
    return held


def release_all(locks: Iterable[OutputLock]) -> None:
    for lock in locks:
        lock.release()


def named(pairs: Dict[str, Optional[PathLike]]) -> List[Tuple[str, Path]]:
    """``{flag: path or None}`` as the (flag, path) pairs the functions above take."""
    return [(flag, Path(p)) for flag, p in pairs.items() if p is not None]
