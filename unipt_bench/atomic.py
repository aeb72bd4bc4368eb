"""Atomic file writes: readers see the old file or the whole new one, never half of one.

Every write goes to a uniquely named temporary file in the destination's folder, is flushed and
fsynced, and then takes the destination's name in one step: `os.replace` (overwrite) or a hard link
that fails when the name exists (`exclusive`: results, which are never overwritten).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import UserError


@contextmanager
def atomic_file(path: Path, mode: str = "w", exclusive: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file to write `path`'s new content into; it becomes `path` when the block ends.

    exclusive=True raises FileExistsError, leaving the existing file untouched, when `path` exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results and reports are meant to be shared
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if the name exists: no check-then-replace race
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write text to `path` atomically (replacing it)."""
    with atomic_file(path) as f:
        f.write(text)


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
    """Fail now, in one line, if `path` cannot be written: a folder in its place, or an unwritable folder."""
    target = Path(path)
    check_writable_dir(target.parent, what)
    longest = os.pathconf(target.parent, "PC_NAME_MAX")  # a longer name cannot even be looked up
    if len(os.fsencode(target.name)) > longest:
        raise UserError(f"{what} {target.parent / target.name[:40]}...: the file name is {len(os.fsencode(target.name))} "
                        f"bytes long; file names here hold at most {longest}")
    if target.is_dir():
        raise UserError(f"{what} {target}: is a folder, not a file")
