"""Files of the artifacts and reports areas, on a local folder or on object storage.

The warehouse's Delta tables are read and written by Spark (and by core.delta_log's reader). The
other areas hold plain files: records (JSON), the training snapshot's spec and encoder, the model,
the lookup table's serving files, Data Docs and run reports. This module reads and writes those
by URI, so that a stage does not care where `storage.*` points:

* a local path or file:// URI: the local filesystem. Writes are atomic (a temporary file renamed
  over the target), as core.files does them.
* s3a:// or s3:// (what Spark calls s3a, pyarrow calls s3): pyarrow's S3 filesystem, with the
  credentials, region and endpoint from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
  AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION, AWS_ENDPOINT_URL), never from the config.
  An object appears whole when its upload completes, so a reader never sees a partial file.

Code that needs a local folder (torch.save, numpy, Great Expectations' Data Docs) works in one:
`writing_folder(uri)` gives the folder itself when `uri` is local, else a scratch folder that is
uploaded when the block ends without an error; `reading_folder(uri)` and `reading_files(uri, names)`
give the folder itself, or downloaded copies. A folder is uploaded file by file with its `LAST_FILES` (manifest.json, _SUCCESS)
last, so a reader that checks those first never sees a half-uploaded folder as complete.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from core import files
from core.paths import is_local, local_path

if TYPE_CHECKING:
    import pyarrow.fs as pafs

# Written last when a folder is uploaded: the files whose presence says the folder is complete.
LAST_FILES = ("manifest.json", "version.json", "_SUCCESS")


def join(uri: str, *parts: str) -> str:
    """`uri` with `parts` appended, one '/' between each."""
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def path_in_filesystem(uri: str) -> str:
    """The path of a local path, file://, s3:// or s3a:// URI inside its pyarrow filesystem."""
    if is_local(uri):
        return os.path.abspath(local_path(uri))
    scheme, rest = uri.split("://", 1)
    if scheme not in ("s3", "s3a"):
        raise ValueError(f"{uri!r}: no reader for the {scheme}:// scheme outside Spark (local paths, s3:// and "
                         "s3a:// are supported)")
    return rest


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a local path, file://, s3:// or s3a:// URI."""
    import pyarrow.fs as pafs  # here, not at import: a stage on local storage never loads it

    path = path_in_filesystem(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), path
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _s3(os.environ.get("AWS_ENDPOINT_URL") or "", region, os.environ.get("AWS_ACCESS_KEY_ID") or ""), path


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str, region: str, access_key: str) -> "pafs.S3FileSystem":
    """One S3 filesystem per endpoint, region and identity (the credentials themselves are read
    from the environment by the AWS SDK)."""
    import pyarrow.fs as pafs

    kwargs: dict[str, object] = {"region": region}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = "http" if endpoint.startswith("http://") else "https"
    return pafs.S3FileSystem(**kwargs)


def exists(uri: str) -> bool:
    """Whether a file (not a folder) is at `uri`."""
    if is_local(uri):
        return os.path.isfile(local_path(uri))
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def existing(uris: list[str]) -> set[str]:
    """Which of `uris` are files: a stat each when local; on object storage one listing per folder."""
    import pyarrow.fs as pafs

    found = {u for u in uris if is_local(u) and os.path.isfile(local_path(u))}
    by_folder: dict[str, list[str]] = {}
    for u in uris:
        if not is_local(u):
            by_folder.setdefault(u.rstrip("/").rsplit("/", 1)[0], []).append(u)
    for folder, members in by_folder.items():
        fs, root = filesystem(folder)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
        names = {i.base_name for i in infos if i.type == pafs.FileType.File}
        found.update(u for u in members if u.rstrip("/").rsplit("/", 1)[1] in names)
    return found


def read_bytes(uri: str) -> bytes:
    """The bytes of the file at `uri`; FileNotFoundError naming it when there is none."""
    if is_local(uri):
        with open(local_path(uri), "rb") as f:
            return f.read()
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {uri}") from None
    except OSError as e:
        if "not exist" in str(e) or "NoSuchKey" in str(e):
            raise FileNotFoundError(f"no file at {uri}") from None
        raise


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    """The JSON value of the file at `uri`; a ValueError naming it when it is not valid JSON."""
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as e:
        raise ValueError(f"{uri} is not valid JSON ({e})") from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` whole: atomically on a local folder; one object upload on S3."""
    if is_local(uri):
        files.write_bytes(local_path(uri), data)
        return
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, data: Any, indent: int | None = 2, sort_keys: bool = True,
               default: Callable[[Any], Any] = str) -> None:
    """Write `data` as JSON to `uri` (write_bytes); `default` converts other values (core.files.write_json)."""
    write_text(uri, json.dumps(data, indent=indent, sort_keys=sort_keys, default=default))


def remove_tree(uri: str) -> None:
    """Remove the folder (or prefix) `uri` and everything under it; nothing when it is not there."""
    import pyarrow.fs as pafs

    if is_local(uri):
        if os.path.isdir(local_path(uri)):
            shutil.rmtree(local_path(uri))
        return
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def list_files(uri: str) -> list[str]:
    """Every file under the folder `uri`, as paths relative to it, sorted; [] when there is none."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(os.path.relpath(i.path, root) if is_local(uri) else i.path[len(root.rstrip("/")) + 1:]
                  for i in infos if i.type == pafs.FileType.File)


def children(uri: str) -> list[str]:
    """The names of the files and folders right under the folder `uri`, sorted; [] when there is none."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type in (pafs.FileType.File, pafs.FileType.Directory))


def _complete_last(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (os.path.basename(n) in LAST_FILES, n))


def upload(folder: str | os.PathLike, uri: str) -> int:
    """Copy the local `folder`'s files to the folder `uri`, LAST_FILES last, replacing what was
    there (the prefix is emptied first); the number of files copied."""
    import pyarrow.fs as pafs

    src = Path(folder)
    names = _complete_last([p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()])
    remove_tree(uri)
    fs, root = filesystem(uri)
    for name in names:
        if is_local(uri):
            os.makedirs(os.path.dirname(join(root, name)), exist_ok=True)
        pafs.copy_files(str(src / name), join(root, name), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    return len(names)


def download(uri: str, folder: str | os.PathLike) -> int:
    """Copy the folder `uri`'s files into the local `folder` (created); the number of files copied."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    names = list_files(uri)
    for name in names:
        target = Path(folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(join(root, name), str(target), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
    return len(names)


def scratch_root() -> str:
    """Where remote folders are staged on this machine: $CSCNN_SCRATCH_DIR, else the system temp folder."""
    root = os.environ.get("CSCNN_SCRATCH_DIR") or tempfile.gettempdir()
    os.makedirs(root, exist_ok=True)
    return root


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A new folder under scratch_root() (its name starts with `prefix`), removed after the block
    whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def writing_folder(uri: str, fresh: bool = True, upload_after: bool = True) -> Iterator[Path]:
    """A local folder to write the folder `uri` in.

    Local `uri`: the folder itself, created (emptied first with `fresh`). Remote: a scratch folder
    (with `fresh` False, first filled with what `uri` holds), uploaded over `uri` when the block
    ends without an error (unless `upload_after` is False: a process that only reads, such as a
    training rank other than 0) and removed either way.
    """
    if is_local(uri):
        path = Path(local_path(uri))
        if fresh and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with scratch("cscnn-stage-") as tmp:
        if not fresh:
            download(uri, tmp)
        yield tmp
        if upload_after:
            upload(tmp, uri)


@contextlib.contextmanager
def reading_folder(uri: str, missing_ok: bool = False) -> Iterator[Path]:
    """The folder `uri` as a local folder: itself when local, else a downloaded copy removed after
    the block. FileNotFoundError naming `uri` when it holds no file, unless `missing_ok` (then the
    folder given may not exist, or be empty)."""
    if is_local(uri):
        path = Path(local_path(uri))
        if not path.is_dir() and not missing_ok:
            raise FileNotFoundError(f"no folder at {uri}")
        yield path
        return
    with scratch("cscnn-read-") as tmp:
        if download(uri, tmp) == 0 and not missing_ok:
            raise FileNotFoundError(f"no folder at {uri}")
        yield tmp


@contextlib.contextmanager
def reading_files(uri: str, names: tuple[str, ...]) -> Iterator[Path]:
    """A local folder with the files `names` of the folder `uri` (those that exist): the folder
    itself when local, else a folder of downloaded copies removed after the block."""
    if is_local(uri):
        yield Path(local_path(uri))
        return
    with scratch("cscnn-read-") as tmp:
        for name in names:
            if exists(join(uri, name)):
                (tmp / name).write_bytes(read_bytes(join(uri, name)))
        yield tmp


def mirror(uri: str) -> Path:
    """A local folder that stands for the folder `uri` across calls: itself when local; for
    object storage, a folder of this machine (under scratch_root()/mirror) into which the files
    of `uri` that it lacks are downloaded now. For tools that keep a folder of files they update
    in place (Great Expectations' project and Data Docs); `push` sends their changes back."""
    folder = mirror_folder(uri)
    folder.mkdir(parents=True, exist_ok=True)
    if is_local(uri):
        return folder
    for name in list_files(uri):
        target = folder / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_to = target.with_name(f"{target.name}.download-{os.getpid()}")  # other processes mirror too
            write_to.write_bytes(read_bytes(join(uri, name)))
            os.replace(write_to, target)
    return folder


def mirror_folder(uri: str) -> Path:
    """Where `mirror(uri)` keeps the folder `uri` on this machine, without downloading anything."""
    if is_local(uri):
        return Path(local_path(uri))
    import hashlib

    return Path(scratch_root()) / "mirror" / hashlib.sha1(uri.encode()).hexdigest()[:16]


def push(folder: str | os.PathLike, uri: str, since: float) -> int:
    """Upload the files of `mirror(uri)`'s `folder` modified at or after `since` (a time.time())
    to `uri`, LAST_FILES last; nothing for a local `uri`. The number of files uploaded."""
    if is_local(uri):
        return 0
    src = Path(folder)
    names = _complete_last([p.relative_to(src).as_posix() for p in src.rglob("*")
                            if p.is_file() and p.stat().st_mtime >= since and ".download-" not in p.name])
    for name in names:
        write_bytes(join(uri, name), (src / name).read_bytes())
    return len(names)
