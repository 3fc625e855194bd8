"""File I/O shared by the core, the toy, the figures and the experiments: atomic writes and one JSONL reader.

Atomic writes: a crash mid-write leaves the old file or the new one, never half of one.

Each writer puts the bytes in a temporary file in the destination's directory (same filesystem, so the
rename is atomic), flushes and fsyncs it, then ``os.replace``s it over the destination and fsyncs the
directory so the rename itself survives a power loss. Readers (figure scripts, resumed runs) therefore
never see a truncated JSON.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "check_output_dir",
    "check_output_file",
    "iter_jsonl",
    "read_json",
    "read_jsonl",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
    "write_yaml_atomic",
]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``); create parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus the umask).
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        # The destination is untouched; do not leave the half-written temporary behind.
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically.

    Non-finite floats become ``null`` (strict JSON has no NaN/Infinity, and the figure scripts parse with
    strict readers); paths and other non-JSON scalars become strings.
    """
    text = json.dumps(_jsonable(obj), indent=indent, allow_nan=False, default=str)
    return write_text_atomic(path, text + "\n")


def write_yaml_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as block-style YAML to ``path`` atomically (key order kept)."""
    import yaml

    return write_text_atomic(path, yaml.safe_dump(_jsonable(obj), sort_keys=False, allow_unicode=True))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`write_json_atomic`."""
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def iter_jsonl(path: str | os.PathLike, *, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file (line numbers from 1).

    A line that is not JSON, or not a JSON object, raises ``error`` naming the file and the line number.
    """
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as parse_error:
                raise error(f"{path}, line {number}: not valid JSON ({parse_error.msg})") from None
            if not isinstance(value, dict):
                raise error(f"{path}, line {number}: expected a JSON object, got {type(value).__name__}")
            yield number, value


def read_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (blank lines skipped), at most ``limit`` of them."""
    return [value for _, value in itertools.islice(iter_jsonl(path), limit)]


def _jsonable(obj: Any) -> Any:
    """A copy of ``obj`` with tuples as lists, non-finite floats as None, paths as strings."""
    if isinstance(obj, dict):
        return {str(key): _jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(value) for value in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):  # NumPy / torch scalars
        return _jsonable(obj.item())
    return str(obj)


def _fsync_directory(directory: Path) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check that ``path`` can be an output folder: it is one, or can be created, and takes files.

    Called before any long computation, so a bad output path fails in a second, not after training. Nothing
    is created: one probe file is written and removed in the nearest existing ancestor (``os.access`` says
    yes to root even on a read-only mount).

    Raises:
        ValueError: starting with ``what`` and the path: an existing file, not creatable, or not writable.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file, not a directory")
    _check_creatable(folder, path, what)
    return folder


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file: not a directory, and its folder exists or can be made and
    takes files. Raises ``ValueError`` as :func:`check_output_dir` does."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a directory; give a file path")
    _check_creatable(file.parent, path, what)
    return file


def _check_creatable(folder: Path, path: str | os.PathLike, what: str) -> None:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {str(path)!r} cannot be created: {str(existing)!r} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".disel-write-check-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(f"{what} {str(path)!r} is not writable ({reason} in {str(existing)!r})") from None
