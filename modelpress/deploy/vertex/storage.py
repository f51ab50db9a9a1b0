"""Cloud Storage transfers for the places that cannot rely on the /gcs mount (Ray on Vertex AI's nodes,
the serving container): a prefix down to a folder, a folder up to a prefix."""

from __future__ import annotations

from pathlib import Path

from modelpress.core.errors import ModelpressError


def split(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise ModelpressError(f"{uri} is not a gs:// URI")
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    if not bucket:
        raise ModelpressError(f"{uri} names no bucket: use gs://bucket/path")
    return bucket, prefix.rstrip("/")


def download_prefix(uri: str, dest: Path, *, client=None) -> int:
    """Every object under `uri` into `dest` (relative paths kept); returns how many."""
    if client is None:
        from google.cloud import storage

        client = storage.Client()
    bucket, prefix = split(uri)
    prefix = prefix + "/" if prefix else ""
    dest = Path(dest)
    count = 0
    for blob in client.list_blobs(bucket, prefix=prefix):
        rel = blob.name[len(prefix):]
        if not rel or rel.endswith("/"):
            continue
        target = (dest / rel).resolve()
        if dest.resolve() not in target.parents:  # an object name with ../ must not escape dest
            raise ModelpressError(f"refusing object {blob.name!r}: it would be written outside {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))
        count += 1
    if not count:
        raise ModelpressError(f"no files under {uri}")
    return count


def upload_dir(src: Path, uri: str, *, client=None) -> int:
    """Every file under `src` to `uri`/<relative path>; returns how many."""
    if client is None:
        from google.cloud import storage

        client = storage.Client()
    bucket_name, prefix = split(uri)
    bucket = client.bucket(bucket_name)
    files = sorted(p for p in Path(src).rglob("*") if p.is_file())
    for file in files:
        rel = file.relative_to(src).as_posix()
        bucket.blob(f"{prefix}/{rel}" if prefix else rel).upload_from_filename(str(file))
    return len(files)
