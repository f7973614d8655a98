"""One way to open any URI: local paths, file://, s3://, gs:// (anything pyarrow or fsspec knows).

Credentials come from the standard environment (AWS_* variables, ~/.aws); an S3 endpoint other
than AWS is taken from AWS_ENDPOINT_URL, as boto3 and the AWS CLI do. No credential is ever
formatted into a message.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import time
import uuid
from functools import lru_cache
from typing import Tuple
from urllib.parse import urlparse

import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs")


def is_remote(uri: str) -> bool:
    return urlparse(str(uri)).scheme in REMOTE_SCHEMES


def normalize(uri: str) -> str:
    """A local path becomes an absolute path; a remote URI is kept as it is."""
    uri = str(uri)
    if is_remote(uri):
        return uri.rstrip("/") if uri.count("/") > 3 else uri
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def resolve(uri: str, base_dir: str) -> str:
    """Resolve a manifest's relative uri against the manifest's own directory."""
    uri = str(uri)
    if is_remote(uri) or uri.startswith("file://") or os.path.isabs(uri):
        return normalize(uri)
    return join(base_dir, uri)


def parent(uri: str) -> str:
    if is_remote(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(normalize(uri))


def _s3_options() -> dict:
    opts = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        opts["endpoint_override"] = parsed.netloc or parsed.path
        opts["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts["region"] = region
    return opts


@lru_cache(maxsize=8)
def _filesystem(scheme: str, endpoint_key: str) -> pafs.FileSystem:
    if scheme == "s3":
        return pafs.S3FileSystem(**_s3_options())
    if scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem()
    if scheme == "":
        return pafs.LocalFileSystem()
    import fsspec  # other schemes go through fsspec

    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))


def filesystem(uri: str) -> Tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a URI or local path."""
    uri = str(uri)
    scheme = urlparse(uri).scheme if is_remote(uri) else ""
    endpoint_key = json.dumps(_s3_options(), sort_keys=True) if scheme == "s3" else ""
    fs = _filesystem(scheme, endpoint_key)
    if scheme:
        return fs, uri.split("://", 1)[1]
    return fs, normalize(uri)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str, retries: int = 3, backoff_s: float = 0.5) -> bytes:
    """Read a whole object. Transient object-store errors are retried with backoff."""
    fs, path = filesystem(uri)
    for attempt in range(retries + 1):
        try:
            with fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            if "not found" in str(e).lower() or "does not exist" in str(e).lower():
                raise FileNotFoundError(uri) from None
            if attempt == retries or not is_remote(uri):
                raise
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def write_bytes(uri: str, data: bytes) -> None:
    """Write an object so that readers see either nothing or all of it.

    Locally: write a temporary sibling, then rename. Object stores make a PUT visible only
    when it completes, so a plain write is already atomic there.
    """
    fs, path = filesystem(uri)
    if is_remote(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    os.replace(tmp, path)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(uri: str):
    return json.loads(read_text(uri))


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def list_files(uri: str, suffix: str = "") -> list:
    """Files directly under a directory URI, as URIs, sorted."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    prefix = uri.split("://", 1)[0] + "://" if is_remote(uri) else ""
    return sorted(prefix + i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def write_parquet(uri: str, table) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes(uri, buf.getvalue())


def read_parquet(uri: str, columns=None):
    import pyarrow.parquet as pq

    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)
