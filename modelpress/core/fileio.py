"""Paths and atomic writes.

On Vertex AI, Cloud Storage is mounted under /gcs/ (Cloud Storage FUSE), so `gs://b/k`
maps to `/gcs/b/k` and the data path needs no cloud client.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

GCS_MOUNT = "/gcs"


def local_path(uri: str | os.PathLike) -> Path:
    """Map `gs://bucket/key` to the FUSE mount; leave local paths alone."""
    text = os.fspath(uri)
    if text.startswith("gs://"):
        return Path(GCS_MOUNT) / text[len("gs://"):]
    return Path(text).expanduser()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` in one rename.

    On failure the temporary directory is removed and `final` is left as it was, so a
    half-written artifact is never visible.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    try:
        if final.exists():
            # KFP pre-creates output directories; an empty or stale one is replaced whole.
            os.replace(final, old)
        os.replace(tmp, final)
    except OSError:
        # Cloud Storage FUSE (Vertex's /gcs) refuses to rename directories on flat buckets
        # unless mounted with rename-dir-limit: copy file by file instead (each file still
        # appears whole; the folder does not appear at once).
        shutil.copytree(tmp, final, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename directory `src` to `dst`, which must not exist; where the file system cannot
    rename directories (Cloud Storage FUSE), copy it, still refusing an existing `dst`."""
    try:
        os.replace(src, dst)
    except OSError:
        if Path(dst).exists():
            raise FileExistsError(f"{dst} exists already") from None
        shutil.copytree(src, dst)
        shutil.rmtree(src, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
