"""Content fingerprints of dataset sources, so that caches follow the data, not its path.

Pipelines pass the fingerprint to the data step as a parameter: it becomes part of that
step's cache key, so editing a CSV in place (or refreshing a gs:// object) reruns the data
step and everything downstream of it. Local files are hashed; Cloud Storage objects are
identified by their generation and MD5 from the object listing, without downloading them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from modelpress.core.errors import ModelpressError
from modelpress.data.sources import BUILTIN_SOURCES

_CHUNK = 1 << 20


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)


def local_fingerprint(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and contents (hidden entries skipped)."""
    h = hashlib.sha256()
    if path.is_file():
        _hash_file(h, path)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        for file in files:
            h.update(str(file.relative_to(path)).encode() + b"\0")
            _hash_file(h, file)
            h.update(b"\0")
    else:
        raise ModelpressError(f"dataset source not found: {path}. Give 'digits', 'diabetes', an existing "
                              ".csv/.npz file or an image folder")
    return "sha256:" + h.hexdigest()[:32]


def gcs_fingerprint(uri: str, client=None) -> str:
    """Generation and MD5 of every object at `uri` (one object, or a prefix ending in a folder)."""
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket or not name:
        raise ModelpressError(f"{uri} names no object: use gs://bucket/path/to/data")
    if client is None:
        from google.cloud import storage

        client = storage.Client()
    prefix = name.rstrip("/")
    try:
        blobs = [b for b in client.list_blobs(bucket, prefix=prefix)
                 if b.name == prefix or b.name.startswith(prefix + "/")]
    except Exception as exc:  # credentials, permissions, network: the submitter's to fix
        raise ModelpressError(f"cannot list {uri} to fingerprint the data ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); check `gcloud auth application-default login` and "
                              "that you may read the bucket") from None
    if not blobs:
        raise ModelpressError(f"no Cloud Storage object at {uri}; upload the data first "
                              "(gcloud storage cp FILE gs://BUCKET/PATH)")
    h = hashlib.sha256()
    for b in sorted(blobs, key=lambda b: b.name):
        h.update(f"{b.name}\0{b.generation}\0{b.md5_hash}\0".encode())
    return "gcs:" + h.hexdigest()[:32]


def fingerprint(source: str, *, gcs_client=None) -> str:
    """A short string that changes whenever the content behind `source` changes."""
    if source in BUILTIN_SOURCES:  # shipped by a package: its version is its content
        import sklearn

        return f"{source}:scikit-learn-{sklearn.__version__}"
    if source.startswith("gs://"):
        return gcs_fingerprint(source, gcs_client)
    return local_fingerprint(Path(source))


def dataset_fingerprint(source: str, tokenizer: str = "", *, gcs_client=None) -> str:
    """What the data step's output depends on: the source's content and, for text, the tokenizer's."""
    text = fingerprint(source, gcs_client=gcs_client)
    return f"{text};tokenizer={fingerprint(tokenizer, gcs_client=gcs_client)}" if tokenizer else text


def check(source: str, given: str, tokenizer: str = "") -> tuple[str, str]:
    """The fingerprint of `source` (and `tokenizer`) now, and the log line comparing it with the one the
    pipeline was given."""
    computed = dataset_fingerprint(source, tokenizer)
    note = "" if computed == given else (
        f" (the pipeline was given {given!r}: the data changed since submission)"
        if given else " (no fingerprint was passed: this step's cache key ignores the content)")
    return computed, f"[make-dataset] source {source}, content fingerprint {computed}{note}"
