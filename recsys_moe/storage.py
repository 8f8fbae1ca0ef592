"""Paths on the local disk or on an object store (``s3://``, ``gs://``, ``abfs://``), one set of
helpers for both (imports without torch).

A local path is a :class:`~pathlib.Path`; a remote one stays a string (``Path`` would fold
``s3://bucket`` into ``s3:/bucket``), and :func:`join` builds both. Files are opened through
pyarrow's file systems (:func:`filesystem`), which take credentials from the usual environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for an
S3-compatible server, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``); Polars reads and
writes the same URIs with the same variables.

Atomic writes keep their meaning on object stores: one object is written whole or not at all (a
PUT, or a multipart upload that only appears when completed), so a single file needs no temporary
name; a folder is committed by writing its manifest last and read only when the manifest is there.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from recsys_moe import atomic
from recsys_moe.atomic import replacing

if TYPE_CHECKING:
    import polars as pl

Location = str | Path
"""A local :class:`Path` or a remote URI string."""

_REMOTE = re.compile(r"^(s3|s3a|gs|gcs|abfs|abfss|az)://", re.IGNORECASE)
_GLOB = re.compile(r"[*?\[]")


class StorageError(OSError):
    """A path on an object store cannot be reached or read; the message names it."""


@contextmanager
def _failing(path: Location, what: str) -> Iterator[None]:
    """Raise an OSError of the store as a StorageError naming ``path`` and what failed."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"{path}: cannot be {what} ({exc})") from exc


def is_remote(path: Location | None) -> bool:
    """True for an object-store URI (``s3://``, ``gs://``, ``abfs://`` ...)."""
    return path is not None and bool(_REMOTE.match(str(path)))


def location(path: Location) -> Location:
    """``path`` as a :class:`Path` when local, a URI without a trailing slash when remote."""
    return str(path).rstrip("/") if is_remote(path) else Path(path)


def join(base: Location, *names: str) -> Location:
    """``base / name / ...`` for a local folder or a URI prefix."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *names])
    return Path(base).joinpath(*names)


def filesystem(path: Location) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system holding ``path`` and the path inside it."""
    if not is_remote(path):
        return pafs.LocalFileSystem(), str(Path(path).absolute())
    uri = str(path)
    if uri.lower().startswith("s3a://"):
        uri = "s3://" + uri[6:]
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError / ValueError by scheme
        raise StorageError(f"{path}: cannot open this object store ({exc})") from exc


def _info(path: Location) -> pafs.FileInfo:
    fs, inner = filesystem(path)
    with _failing(path, "reached"):
        return fs.get_file_info(inner)


def is_file(path: Location) -> bool:
    return Path(path).is_file() if not is_remote(path) else _info(path).type == pafs.FileType.File


def is_dir(path: Location) -> bool:
    """For a prefix on an object store: whether any object lies below it."""
    if not is_remote(path):
        return Path(path).is_dir()
    fs, inner = filesystem(path)
    with _failing(path, "listed"):
        return bool(fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=False)))


def exists(path: Location) -> bool:
    return is_file(path) or is_dir(path)


def stat(path: Location) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of one file."""
    if not is_remote(path):
        st = Path(path).stat()
        return st.st_size, st.st_mtime_ns
    info = _info(path)
    if info.type != pafs.FileType.File:
        raise StorageError(f"{path}: no such object")
    return int(info.size or 0), int(info.mtime_ns or 0)


def files_below(path: Location) -> list[Location]:
    """Every file below a folder or prefix, sorted (names starting with ``.`` or ``_`` left out,
    as Hive and Spark write markers there)."""
    if not is_remote(path):
        root = Path(path)
        return sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root).as_posix()))
    fs, inner = filesystem(path)
    with _failing(path, "listed"):
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=True))
    # a listed path as a URI: the listing's root spelled as the caller spelled it (an abfs:// URI
    # names its account, which the file system's own paths leave out)
    root, base = inner.rstrip("/"), str(path).rstrip("/")
    return sorted(base + i.path[len(root):] for i in infos
                  if i.type == pafs.FileType.File and not _hidden(i.path[len(root) + 1:]))


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def expand(spec: Location, suffixes: Iterable[str] = ()) -> list[Location]:
    """A file, a folder (every file below it whose name ends with one of ``suffixes``) or a glob
    (``*``, ``?``, ``[...]``; ``**`` crosses folders); sorted. Empty when nothing matches."""
    suffixes = tuple(suffixes)
    text = str(spec)
    if _GLOB.search(text):
        head = text[: _GLOB.search(text).start()].rsplit("/", 1)[0]
        pattern = text if is_remote(spec) else str(Path(text).absolute())
        below = files_below(head if is_remote(spec) else Path(head or ".").absolute())
        regex = _glob_regex(pattern)
        return [f for f in below if regex.match(str(f))]
    if is_file(spec):
        return [location(spec)]
    if is_dir(spec):
        return [f for f in files_below(spec) if not suffixes or str(f).endswith(suffixes)]
    return []


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` (and ``**/``) matches across folders; ``*`` and ``?`` stay within one name."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def read_text(path: Location) -> str:
    if not is_remote(path):
        return Path(path).read_text()
    fs, inner = filesystem(path)
    with _failing(path, "read"), fs.open_input_stream(inner) as f:
        return f.read().decode()


def write_text(path: Location, text: str) -> None:
    """Replace one file whole: locally under a temporary name, on an object store by one PUT."""
    if not is_remote(path):
        with replacing(path) as tmp:
            tmp.write_text(text)
        return
    fs, inner = filesystem(path)
    with _failing(path, "written"), fs.open_output_stream(inner) as f:
        f.write(text.encode())


def open_input(path: Location):
    """A seekable pyarrow file for reading (``pq.ParquetFile`` accepts it)."""
    fs, inner = filesystem(path)
    with _failing(path, "opened"):
        return fs.open_input_file(inner)


def remove(path: Location) -> None:
    """Delete a file or everything below a folder or prefix; nothing when absent."""
    if not is_remote(path):
        p = Path(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        return
    fs, inner = filesystem(path)
    with _failing(path, "deleted"):
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.File:
            fs.delete_file(inner)
        elif is_dir(path):
            fs.delete_dir_contents(inner, missing_dir_ok=True)


def upload(local: Path, dest: Location) -> None:
    """Copy a local file, or a folder's files, to ``dest``."""
    if local.is_dir():
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            upload(f, join(dest, *f.relative_to(local).parts))
        return
    fs, inner = filesystem(dest)
    with _failing(dest, "written"):
        pafs.copy_files(str(local.absolute()), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def makedirs(path: Location) -> None:
    """Create a local folder (and its parents); object stores have no folders to create."""
    if not is_remote(path):
        Path(path).mkdir(parents=True, exist_ok=True)


def write_parquet(frame: pl.DataFrame, path: Location, **options: Any) -> None:
    """Write one Parquet file whole: locally under a temporary name then renamed, on an object
    store directly (the object appears only once the upload completes)."""
    if is_remote(path):
        atomic.write_parquet(frame, str(path), **options)
        return
    with replacing(path) as tmp:
        atomic.write_parquet(frame, tmp, **options)


@contextmanager
def new_folder(path: Location, overwrite: bool = False, manifest: str = "MANIFEST.json") -> Iterator[Location]:
    """Yield where to build the folder ``path``; the caller writes ``manifest`` last.

    Locally the folder is built under a temporary name and renamed into place at the end
    (:func:`~recsys_moe.atomic.replacing`), so an old one stays whole until then. On an object
    store nothing can be renamed: the prefix is written in place, and readers trust it only once
    its manifest exists. An existing output is refused unless ``overwrite``, which there deletes it
    first; a failed write deletes what it wrote, and a prefix a killed write left without its
    manifest is replaced without asking (a local killed write leaves only its temporary)."""
    unfinished = is_remote(path) and not is_file(join(path, manifest))
    if exists(path) and not overwrite and not unfinished:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    if not is_remote(path):
        with replacing(path) as tmp:
            tmp.mkdir(parents=True)
            yield tmp
        return
    remove(path)
    try:
        yield location(path)
    except BaseException:
        remove(path)
        raise
