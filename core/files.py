"""Small local-file helpers shared by the stages: checksums and atomic (temporary file + rename) writes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterator



def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def replace_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` ("w" text or "wb" bytes) and rename it over `path` on success.

    Readers see the old file or the new one whole, never a partial write; on an exception the
    temporary file is removed and `path` is left as it was. The parent folder is created.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"replace_file mode must be 'w' or 'wb', got {mode!r}")
    target = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive flock on the file `path` (created, with its folder) for the block.

    The kernel releases the lock when its holder dies, so a SIGKILLed process never leaves it held."""
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (replace_file)."""
    with replace_file(path) as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (replace_file)."""
    with replace_file(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2, sort_keys: bool = True,
               default: Callable[[Any], Any] = str) -> None:
    """Write `data` as JSON to the local `path` atomically; `default` converts other values
    (str: dates and paths; float: numpy scalars)."""
    with replace_file(path) as f:
        json.dump(data, f, indent=indent, sort_keys=sort_keys, default=default)


def state_folder(env_var: str, default: str) -> Path:
    """A long-lived helper's folder of records and logs: $env_var when set, else `default` (~ expanded)."""
    return Path(os.path.expanduser(os.environ.get(env_var) or default))
