"""The one filesystem layer: a lakehouse on a local (or shared POSIX) path or on S3-compatible object storage.

A lakehouse location is a :class:`pathlib.Path` for a local folder or a ``upath.UPath`` (fsspec, with ``s3fs``)
for ``s3a://bucket/prefix``; both support ``/``, ``exists``, ``read_text`` and friends, and ``str()`` of either is
the URI Spark and delta-rs take. What pathlib cannot do the same way on both (moving, copying, deleting trees,
uploading a locally built folder) goes through the functions here.

Credentials and the endpoint come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for an S3-compatible server)
or, on the Spark side, from ``spark.hadoop.fs.s3a.*`` conf: never from the repository.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

# Hadoop's S3 connector is s3a://; s3:// names the same bucket and is rewritten to s3a:// so Spark can open it.
OBJECT_STORE_SCHEMES = {"s3a": "s3a", "s3": "s3a"}
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class UnsupportedLocation(ValueError):
    """A lakehouse URI whose scheme the jobs cannot read and write."""


def location(value: Any) -> Any:
    """A local path (or ``file://`` URI) -> ``Path``; ``s3a://``/``s3://`` -> ``UPath``; anything else refused."""
    if not isinstance(value, str):
        if getattr(value, "protocol", "") in OBJECT_STORE_SCHEMES:
            return value  # already an object-store location
        value = str(value)
    match = SCHEME.match(value)
    if match is None:
        return Path(value)
    scheme = match.group(1).lower()
    if scheme == "file":
        import urllib.parse

        return Path(urllib.parse.unquote(urllib.parse.urlparse(value).path))
    if scheme not in OBJECT_STORE_SCHEMES:
        raise UnsupportedLocation(
            f"lakehouse {value}: {scheme}:// is not supported (a local path, file://, s3a:// or s3:// is); it is "
            "refused rather than read as a relative folder named after the scheme"
        )
    from upath import UPath

    bucket_and_key = value[match.end() :].rstrip("/")
    if not bucket_and_key:
        raise UnsupportedLocation(f"lakehouse {value}: name a bucket (s3a://bucket/prefix)")
    return UPath(f"{OBJECT_STORE_SCHEMES[scheme]}://{bucket_and_key}", **s3fs_options())


def is_remote(path: Any) -> bool:
    return not isinstance(path, Path)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def s3fs_options() -> dict[str, Any]:
    """fsspec/s3fs options: path-style addressing when an S3-compatible endpoint is set (MinIO, moto, Ceph)."""
    endpoint = _endpoint()
    if not endpoint:
        return {}
    return {"endpoint_url": endpoint, "config_kwargs": {"s3": {"addressing_style": "path"}}}


def spark_conf() -> dict[str, str]:
    """Hadoop S3A settings for an object-store lakehouse: the endpoint and region from the AWS environment.

    The credentials stay in the environment, where S3A's default provider chain reads them (on a cluster, give the
    executors the same variables or an instance profile).
    """
    conf = {"spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem"}
    endpoint = _endpoint()
    if endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(endpoint.startswith("https://")).lower()
    if _region():
        conf["spark.hadoop.fs.s3a.endpoint.region"] = _region()
    return conf


def delta_storage_options(path: Any) -> dict[str, str] | None:
    """delta-rs storage options for a table at ``path`` (None for a local table)."""
    if not is_remote(path):
        return None
    options = {}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(key):
            options[key] = os.environ[key]
    if _region():
        options["AWS_REGION"] = _region()
    endpoint = _endpoint()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        options["AWS_ALLOW_HTTP"] = str(endpoint.startswith("http://")).lower()
    return options


def delta_table(path: Any, **kwargs):
    """A delta-rs ``DeltaTable`` over a local or object-store table."""
    from deltalake import DeltaTable

    return DeltaTable(str(path), storage_options=delta_storage_options(path), **kwargs)


# ---- what pathlib does not do the same way on both ------------------------------------------------------------
def exists(path: Any) -> bool:
    """Whether a file or folder exists now: on object storage, past s3fs's listing cache, since another process
    (Spark's JVM, another job) may have written it since this one last looked."""
    if is_remote(path):
        path.fs.invalidate_cache(path.path)
    return path.exists()


def relative_href(target: Any, base_dir: Any) -> str:
    """A link from a page in ``base_dir`` to ``target`` (both in the lakehouse, local or in one bucket), as a
    relative URL: pages link to each other the same way on disk and on object storage."""
    import posixpath

    def key(p: Any) -> str:
        return p.path if is_remote(p) else Path(p).as_posix()

    return posixpath.relpath(key(target), key(base_dir))


def makedirs(path: Any) -> None:
    """Create a folder (a no-op on object storage, where folders are key prefixes)."""
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)


def remove_tree(path: Any) -> None:
    """Delete a folder and everything under it; a missing folder is fine."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


def move(src: Any, dst: Any) -> None:
    """Move a file or folder inside the lakehouse (an atomic rename locally; copy then delete on object storage,
    where each object appears whole or not at all)."""
    if not is_remote(src):
        os.replace(src, dst)
        return
    fs = src.fs
    fs.invalidate_cache()  # another process may have written under src since this process listed it
    # Object by object: fsspec's recursive mv also tries to copy the folder's own (non-existent) key.
    files = fs.find(src.path) if fs.isdir(src.path) else [src.path]
    for key in files:
        fs.copy(key, dst.path + key[len(src.path) :])
    fs.rm(files)


def copy(src: Any, dst: Any) -> None:
    """Copy one file inside the lakehouse (a hard link locally where the file system allows)."""
    if is_remote(src):
        src.fs.copy(src.path, dst.path)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def upload(local: Path, dst: Any) -> None:
    """Put a local file at ``dst`` in the lakehouse."""
    if is_remote(dst):
        dst.fs.put_file(str(local), dst.path)
    else:
        shutil.copyfile(local, dst)


def publish_tree(local: Path, dst: Any) -> None:
    """Mirror a folder built on local disk (a Data Docs site, report pages) into the lakehouse; the local folder is
    the publisher's working copy, the lakehouse copy is what readers open."""
    if not is_remote(dst):
        if local.resolve() != Path(dst).resolve():
            shutil.copytree(local, dst, dirs_exist_ok=True)
        return
    dst.fs.put(str(local).rstrip("/") + "/", dst.path.rstrip("/") + "/", recursive=True)


def fetch_tree(src: Any, local: Path) -> None:
    """Copy a lakehouse folder (if it exists) onto local disk: the working copy :func:`publish_tree` sends back."""
    if not src.exists():
        return
    if not is_remote(src):
        shutil.copytree(src, local, dirs_exist_ok=True)
        return
    src.fs.get(src.path.rstrip("/") + "/", str(local).rstrip("/") + "/", recursive=True)
