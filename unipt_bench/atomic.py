"""Atomic file writes: readers see the old file or the whole new one, never half of one.

Every write goes to a uniquely named temporary file in the destination's folder, is flushed and
fsynced, and then takes the destination's name in one step: `os.replace` (overwrite) or a hard link
that fails when the name exists (`exclusive`: results, which are never overwritten). A link to a
regular file keeps being a link: its target gets the new content.

Outputs that are streams, not files, are written through, never replaced: `-` (stdout), a device
(`/dev/null`), a FIFO, a socket, or a path through `/proc/self/fd` or `/dev/fd`. A FIFO is opened
without blocking, so one that nobody reads is an error at once instead of a hang.

A write that fails (disk full, read-only folder, a FIFO with no reader) is a `WriteError`: one line
naming the path, and no partial file left behind.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import UserError

STDOUT = "-"
# paths that name an open file of a process: a fresh file put in their place would never be seen
FD_PATHS = ("/proc/", "/dev/fd/", "/dev/stdout", "/dev/stderr")


class WriteError(UserError, OSError):
    """A destination that could not take its content (disk full, read-only, a FIFO nobody reads): one line
    naming it. An OSError too, so callers that treat a failed write as optional (caches) still catch it."""


def cannot_write(path: Path | str, exc: OSError) -> WriteError:
    """The one-line error for a failed write of `path` (an error that already is one stays as it is)."""
    return exc if isinstance(exc, WriteError) else WriteError(f"{path}: cannot write ({exc.strerror or exc})")


def through_fd_path(path: Path | str) -> bool:
    """Whether `path`, or a link on the way to its target, names a process's open file (/proc/self/fd/1)."""
    hop = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        if hop.startswith(FD_PATHS):
            return True
        if not os.path.islink(hop):
            return False
        hop = os.path.abspath(os.path.join(os.path.dirname(hop), os.readlink(hop)))
    return False


def is_stream(path: Path | str) -> bool:
    """Whether `path` is written through rather than replaced: `-`, a device, a FIFO, a socket, an fd path."""
    if str(path) == STDOUT:
        return True
    try:
        mode = os.stat(path).st_mode  # follows links
    except OSError:
        return False  # nothing there yet: a new file
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or through_fd_path(path)


@contextmanager
def write_through(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a stream output (see `is_stream`) for writing in place. A FIFO is opened non-blocking: with no
    reader the open fails (ENXIO) instead of waiting forever; writes then block as usual. Always appending:
    a regular file behind /dev/stdout is the shell's redirection (`>` emptied it, `>>` keeps what is there)."""
    if str(path) == STDOUT:
        stream = sys.stdout.buffer if "b" in mode else sys.stdout
        try:
            yield stream
            stream.flush()
        except OSError as exc:
            raise cannot_write("stdout", exc) from None
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise WriteError(f"{path}: a FIFO that nobody reads; start its reader first") from None
        raise cannot_write(path, exc) from None
    os.set_blocking(fd, True)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
    except OSError as exc:
        raise cannot_write(path, exc) from None


@contextmanager
def atomic_file(path: Path, mode: str = "w", exclusive: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file to write `path`'s new content into; it becomes `path` when the block ends.

    exclusive=True raises FileExistsError, leaving the existing file untouched, when `path` exists.
    A stream output (`is_stream`) is written through instead. Any other failure is a WriteError.
    """
    if not exclusive and is_stream(path):
        with write_through(path, mode) as f:
            yield f
        return
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)  # the link stays a link
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results and reports are meant to be shared
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if the name exists: no check-then-replace race
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise cannot_write(path, exc) from None
        raise


def write_atomic(path: Path | str, text: str) -> None:
    """Write text to `path` atomically (replacing it), or through it when it is a stream (`is_stream`)."""
    with atomic_file(Path(path)) as f:
        f.write(text)


def append_text(path: Path | str, text: str) -> None:
    """Append text to `path` (a log such as $GITHUB_STEP_SUMMARY): a FIFO nobody reads is an error, not a hang."""
    try:
        if is_stream(path):
            with write_through(path, "a") as f:
                f.write(text)
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise cannot_write(path, exc) from None


def check_writable_dir(path: Path | str, what: str) -> None:
    """Fail now, in one line, if files cannot be created in folder `path` (made if missing): before any
    run starts, so finished work is never lost to a destination that cannot take it."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tmp-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what} {folder}: cannot write there ({exc.strerror or exc})") from None


def check_writable_file(path: Path | str, what: str) -> None:
    """Fail now, in one line, if `path` cannot be written: a folder in its place, an unwritable folder, a name
    too long for the file system, or a stream (device, FIFO) without write permission. A FIFO is not opened
    here: closing it would end its reader."""
    if str(path) == STDOUT:
        return
    if is_stream(path):
        if not os.access(path, os.W_OK):
            raise UserError(f"{what} {path}: not writable (permission denied)")
        return
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    check_writable_dir(target.parent, what)
    longest = os.pathconf(target.parent, "PC_NAME_MAX")  # a longer name cannot even be looked up
    if len(os.fsencode(target.name)) > longest:
        raise UserError(f"{what} {target.parent / target.name[:40]}...: the file name is {len(os.fsencode(target.name))} "
                        f"bytes long; file names here hold at most {longest}")
    if target.is_dir():
        raise UserError(f"{what} {target}: is a folder, not a file")
