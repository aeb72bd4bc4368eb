"""Reading a pickle that should hold only plain data (MSVD's `raw-captions.pkl`) without running its code.

`pickle.load` calls whatever callable a file names (a `REDUCE` of `os.system` runs a shell command), so a
downloaded pickle is never unpickled that way here. `PlainUnpickler` refuses every global: `find_class`,
through which the pickle machine reaches any class or function (GLOBAL, STACK_GLOBAL, INST, OBJ and the
extension registry's EXT codes all go through it), raises. What remains are the opcodes that build plain
values: dict, list, tuple, set, frozenset, str, bytes, int, float, bool and None.

A small pickle can still stand for a huge value: MEMO references let a million captions share one list
of words, which joining them would expand a million times. So the words and characters of the captions
are counted while they are checked, before any is joined, and a file past MAX_WORDS or MAX_CHARS is refused.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from ..errors import UserError
from .files import expect

MAX_BYTES = 1 << 30  # a captions file is tens of MB; a larger file is refused before it is read
# MSVD's some 80,000 captions hold well under a million words and a few million characters:
MAX_WORDS = 1 << 22  # words (a string caption counts one) in all captions, shared lists counted at each use
MAX_CHARS = 1 << 26  # characters of all captions once joined


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle named a class or function (module.name), which plain data never needs."""


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that builds containers and scalars only: any class or function it is asked for is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id (external object reference)")


def load_plain(path: Path, what: str) -> Any:
    """The plain value pickled in `path`; a one-line UserError naming the file when it holds anything else."""
    if not path.is_file():
        raise UserError(f"missing {path} ({what})")
    expect(path.stat().st_size <= MAX_BYTES, path, f"{what} is larger than {MAX_BYTES >> 20} MiB")
    data = path.read_bytes()
    try:
        return PlainUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as exc:
        raise UserError(f"{path}: refused to unpickle: it asks for {exc}, code rather than data "
                        f"(expected {what})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, RecursionError, UnicodeDecodeError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable pickle ({reason}); expected {what}") from None


def load_captions(path: Path) -> dict[str, list[str]]:
    """MSVD's raw-captions.pkl: {video_id: [caption, ...]}, each caption a list of words (as CLIP4Clip's
    copy stores them: its loader joins them with spaces) or a string. Returns each caption as one string."""
    what = "MSVD captions: a dict of video id -> list of captions (word lists or strings)"
    data = load_plain(path, what)
    expect(isinstance(data, dict), path, f"expected {what}, got a {type(data).__name__}")
    expect(data, path, f"no videos; expected {what}")
    captions: dict[str, list[str]] = {}
    words = chars = 0
    for video, entries in data.items():
        where = f"entry {video!r}"
        expect(isinstance(video, str), path, f"{where}: video ids must be strings, got a {type(video).__name__}")
        expect(isinstance(entries, list | tuple), path,
               f"{where} must be a list of captions, got a {type(entries).__name__}")
        expect(entries, path, f"{where} has no captions")
        texts = []
        for k, caption in enumerate(entries):
            words += len(caption) if isinstance(caption, list | tuple) else 1
            expect(words <= MAX_WORDS, path, f"the captions expand to more than {MAX_WORDS:,} words (lists shared "
                   "by reference are counted at each use); refused")
            if isinstance(caption, list | tuple):
                bad = next((w for w in caption if not isinstance(w, str)), None)
                expect(bad is None, path, f"{where}[{k}]: words must be strings, got a {type(bad).__name__}")
                chars += sum(map(len, caption)) + len(caption)  # the words and the spaces that join them
            else:
                expect(isinstance(caption, str), path,
                       f"{where}[{k}] must be a string or a list of word strings, got a {type(caption).__name__}")
                chars += len(caption)
            expect(chars <= MAX_CHARS, path, f"the captions expand to more than {MAX_CHARS:,} characters; refused")
            texts.append(caption if isinstance(caption, str) else " ".join(caption))
        captions[video] = texts
    return captions
