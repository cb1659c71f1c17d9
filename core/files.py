"""Small local-file helpers shared by the stages."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from core.paths import is_local, local_path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_local(uri: str, data: dict[str, Any]) -> None:
    """Write a small JSON record atomically (temporary file + os.replace) when `uri` is local;
    a no-op for remote storage, where the stage's Delta tables are the record."""
    if not is_local(uri):
        return
    path = local_path(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
    os.replace(path + ".tmp", path)
