"""One way to open any URI: local paths, file://, s3://, gs:// (anything pyarrow or fsspec knows).

Credentials come from the standard environment (AWS_* variables, ~/.aws); an S3 endpoint other
than AWS is taken from AWS_ENDPOINT_URL, as boto3 and the AWS CLI do. On AWS itself each bucket's
region is resolved (once per bucket), so buckets in several regions work from one cluster. No
credential is ever formatted into a message.

Failures: an object that does not exist is a FileNotFoundError (the caller decides whether that is
one bad row); anything else a remote store does wrong (no connection, access denied, throttling, a
missing bucket) is retried by pyarrow's AWS standard retry strategy and then raised as a
StorageError naming the URI and the cause.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from functools import lru_cache
from typing import Tuple
from urllib.parse import urlparse

import pyarrow.fs as pafs

from raddist.errors import StorageError

S3_ATTEMPTS = int(os.environ.get("RADDIST_S3_ATTEMPTS", "10"))  # pyarrow's standard retry strategy, per request
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


def _s3_options(bucket: str = "") -> dict:
    """The S3 client options for a bucket: an endpoint override (AWS_ENDPOINT_URL[_S3], as boto3
    reads them: MinIO, moto, a VPC endpoint) is used as given with AWS_REGION; otherwise the bucket's
    own region is asked of S3 (once per bucket), so a bucket outside the cluster's region works."""
    opts = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        opts["endpoint_override"] = parsed.netloc or parsed.path
        opts["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if bucket and not endpoint:
        region = bucket_region(bucket)
    if region:
        opts["region"] = region
    return opts


resolve_region = pafs.resolve_s3_region  # S3's HeadBucket answer; a module attribute so tests can stand in for S3


@lru_cache(maxsize=256)
def bucket_region(bucket: str) -> str:
    """The region an S3 bucket lives in, asked once per bucket and process."""
    try:
        return resolve_region(bucket)
    except OSError as e:
        raise StorageError(f"s3://{bucket}", f"cannot find the bucket's region: {describe(e)}; check the "
                           "bucket's name, or set AWS_ENDPOINT_URL_S3 and AWS_REGION to its endpoint") from None


@lru_cache(maxsize=8)
def _filesystem(scheme: str, endpoint_key: str) -> pafs.FileSystem:
    if scheme == "s3":
        return pafs.S3FileSystem(**json.loads(endpoint_key),
                                 retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))
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
    bucket = uri.split("://", 1)[1].split("/", 1)[0] if scheme == "s3" else ""
    endpoint_key = json.dumps(_s3_options(bucket), sort_keys=True) if scheme == "s3" else ""
    fs = _filesystem(scheme, endpoint_key)
    if scheme:
        return fs, uri.split("://", 1)[1]
    return fs, normalize(uri)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    """True for a file (or object); False for a directory (or prefix) or nothing."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(uri: str) -> bytes:
    """Read a whole object: FileNotFoundError if it does not exist, StorageError if the store fails."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        if is_remote(uri):
            _require_bucket(uri)
        raise FileNotFoundError(uri) from None
    except OSError as e:
        if not is_remote(uri):
            raise
        raise StorageError(uri, describe(e)) from None


def describe(e: Exception) -> str:
    """A storage failure in a few words, for one line of output (pyarrow's messages run long)."""
    text = str(e)
    for marker, words in (("ACCESS_DENIED", "access denied (check the credentials and the bucket policy)"),
                          ("NETWORK_CONNECTION", "cannot connect"), ("Could not connect", "cannot connect"),
                          ("NO_SUCH_BUCKET", "no such bucket"), ("SLOW_DOWN", "throttled by the store"),
                          ("INVALID_ACCESS_KEY_ID", "the access key is not valid"),
                          ("SIGNATURE_DOES_NOT_MATCH", "the secret key does not match the access key"),
                          ("EXPIRED_TOKEN", "the session token has expired")):
        if marker.lower() in text.lower():
            return f"{words} ({type(e).__name__})"
    return text.split("Detail:")[0].strip()[:200]


@lru_cache(maxsize=64)
def _bucket_exists(scheme_bucket: str) -> bool:
    fs, path = filesystem(scheme_bucket)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _require_bucket(uri: str) -> None:
    """A missing bucket reads as a missing object in S3; it is a storage error, not a bad row."""
    scheme, rest = uri.split("://", 1)
    bucket = rest.split("/", 1)[0]
    try:
        exists = _bucket_exists(f"{scheme}://{bucket}")
    except OSError as e:
        raise StorageError(uri, describe(e)) from None
    if not exists:
        raise StorageError(uri, f"no such bucket '{bucket}'")


def write_bytes(uri: str, data: bytes) -> None:
    """Write an object so that readers see either nothing or all of it.

    Locally: write a temporary sibling, then rename. Object stores make a PUT visible only
    when it completes, so a plain write is already atomic there.
    """
    fs, path = filesystem(uri)
    if is_remote(uri):
        try:
            with fs.open_output_stream(path) as f:
                f.write(data)
        except OSError as e:
            raise StorageError(uri, describe(e)) from None
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(posixpath.dirname(path), recursive=True)
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:  # a full disk, permissions, a parent that is a file: the path and the OS's words
        if os.path.exists(tmp):
            os.remove(tmp)  # no .tmp part left behind
        raise StorageError(uri, e.strerror or describe(e)) from None


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


def delete_file(uri: str) -> None:
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


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
    """One whole-object read, parsed in memory: every table raddist reads is small (a cell's outputs,
    a manifest), and pq.read_table on an S3 path makes 5 requests for each (3 HEADs, 2 ranged GETs),
    each paying S3's first-byte latency (benchmarks/gather.py)."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(read_bytes(uri)), columns=columns)
