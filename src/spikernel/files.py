"""Run-folder files written atomically (write, then rename) so an interruption never leaves half a file.

A write that fails (a read-only folder, a full disk) raises ``WriteError`` naming the file and
the reason, and leaves the previous version of the file, if any, as it was. New files get the
usual permissions (0666 less the umask), like any file the user creates.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable

from spikernel.errors import FileFormatError, SpikernelError, WriteError


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p``, failing as one ``WriteError`` line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError.of(exc, exc.filename or path) from None
    return path


def _temporary(path: Path) -> Path:
    """An empty, new file next to ``path``; ``open`` applies the umask (``mkstemp`` would force 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    make_dir(path.parent)
    try:
        tmp = _temporary(path)
        mode = tmp.stat().st_mode & 0o777  # 0666 less the umask
    except OSError as exc:
        raise WriteError.of(exc, path) from None
    try:
        write(str(tmp))
        if tmp.stat().st_mode & 0o777 != mode:  # a writer that replaced the file (safetensors makes it 0600)
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, SpikernelError):
            raise
        code = exc.errno if isinstance(exc, OSError) else _errno_in_text(exc)
        if code:
            raise WriteError(f"cannot write {path}: {os.strerror(code)}") from None
        raise


def _errno_in_text(exc: BaseException) -> int | None:
    """The errno a writer library (safetensors, HDF5) reports only in its message: '(os error 28)'."""
    found = re.search(r"os error (\d+)|errno = (\d+)", str(exc))
    return int(found.group(1) or found.group(2)) if found else None


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, data: Any) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")

    _atomic(Path(path), write)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; one that is not JSON (edited, damaged) is a ``FileFormatError`` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path} is not valid JSON ({exc}); restore it or remove the folder") from None


def read_json_object(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """A JSON object with the ``required`` keys, else a ``FileFormatError`` naming what is missing."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise FileFormatError(f"{path} holds a JSON {type(data).__name__}, not an object")
    missing = [k for k in required if k not in data]
    if missing:
        raise FileFormatError(f"{path} lacks {', '.join(missing)}")
    return data
