"""Locations the pipeline reads from and writes to: local paths (including PVC mounts), ``s3://`` and ``gs://``.

S3 goes through boto3 (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL``
for MinIO or any S3-compatible store); GCS through google-cloud-storage (the pod's service account, or the key file
named by ``EQFACE_GCS_CREDENTIALS`` when that file exists; ``STORAGE_EMULATOR_HOST`` for an emulator). Object stores
have no folders: a folder is every key under a prefix, and an empty folder is kept as a zero-byte ``<prefix>/`` key,
which Triton's S3 and GCS repository readers list as a folder (an ensemble's version folder is empty).

S3 locations also take Triton's form for a non-AWS endpoint, so that one string names the repository for both the
pipeline and ``tritonserver --model-repository``: ``s3://host:port/bucket/path`` (http) or
``s3://https://host:port/bucket/path``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from eqface import paths

REMOTE_SCHEMES = ("s3", "gs")
GCS_CREDENTIALS_ENV = "EQFACE_GCS_CREDENTIALS"


def is_remote(location: str) -> bool:
    return urlparse(location).scheme in REMOTE_SCHEMES


@dataclass(frozen=True)
class ObjectUri:
    scheme: str
    bucket: str
    key: str  # without leading or trailing slash; "" for the bucket root
    endpoint: str = ""  # S3 only: http(s)://host:port of a non-AWS store named in the URI (Triton's form)

    @classmethod
    def parse(cls, uri: str) -> ObjectUri:
        parsed = urlparse(uri)
        if parsed.scheme not in REMOTE_SCHEMES or not uri.startswith(f"{parsed.scheme}://"):
            expected = " or ".join(f"{s}://" for s in REMOTE_SCHEMES)
            raise ValueError(f"{uri!r} is not an object-store URI (expected {expected})")
        rest, endpoint = uri[len(parsed.scheme) + 3 :], ""
        if parsed.scheme == "s3":
            endpoint, rest = _split_endpoint(rest)
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} names no bucket (expected {parsed.scheme}://BUCKET/PATH)")
        return cls(parsed.scheme, bucket, key.strip("/"), endpoint)

    def child(self, relative: str) -> ObjectUri:
        relative = relative.strip("/")
        key = f"{self.key}/{relative}".strip("/") if relative else self.key
        return ObjectUri(self.scheme, self.bucket, key, self.endpoint)

    def __str__(self) -> str:
        endpoint = f"{self.endpoint}/" if self.endpoint else ""
        return f"{self.scheme}://{endpoint}{self.bucket}/{self.key}"


def _split_endpoint(rest: str) -> tuple[str, str]:
    """Triton's ``s3://[http(s)://]host:port/bucket/path``: (endpoint URL or "", "bucket/path")."""
    for prefix in ("http://", "https://"):
        if rest.startswith(prefix):
            host, _, remainder = rest[len(prefix) :].partition("/")
            return f"{prefix}{host}", remainder
    first, _, remainder = rest.partition("/")
    if ":" in first:
        return f"http://{first}", remainder
    return "", rest


class ObjectStore(Protocol):
    def upload(self, local: Path, key: str) -> None: ...
    def put_empty(self, key: str) -> None: ...
    def download(self, key: str, local: Path) -> None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def list_children(self, prefix: str) -> list[str]: ...


class S3Store:
    def __init__(self, bucket: str, endpoint: str = "") -> None:
        import boto3  # heavy, and only needed for s3:// locations

        self.bucket = bucket
        self.client = boto3.client("s3", endpoint_url=endpoint or None)

    def upload(self, local: Path, key: str) -> None:
        self.client.upload_file(str(local), self.bucket, key)

    def put_empty(self, key: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")

    def download(self, key: str, local: Path) -> None:
        self.client.download_file(self.bucket, key, str(local))

    def list_keys(self, prefix: str) -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def list_children(self, prefix: str) -> list[str]:
        names = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            names += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return names


class GcsStore:
    def __init__(self, bucket: str) -> None:
        from google.cloud import storage  # heavy, and only needed for gs:// locations

        key_file = os.environ.get(GCS_CREDENTIALS_ENV, "")
        if key_file and Path(key_file).is_file():
            client = storage.Client.from_service_account_json(key_file)
        elif os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(
                project=os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator"), credentials=AnonymousCredentials()
            )
        else:
            client = storage.Client()
        self.bucket = client.bucket(bucket)
        self.client = client

    def upload(self, local: Path, key: str) -> None:
        self.bucket.blob(key).upload_from_filename(str(local))

    def put_empty(self, key: str) -> None:
        self.bucket.blob(key).upload_from_string(b"")

    def download(self, key: str, local: Path) -> None:
        self.bucket.blob(key).download_to_filename(str(local))

    def list_keys(self, prefix: str) -> list[str]:
        return [blob.name for blob in self.client.list_blobs(self.bucket, prefix=prefix)]

    def list_children(self, prefix: str) -> list[str]:
        pages = self.client.list_blobs(self.bucket, prefix=prefix, delimiter="/")
        list(pages)  # the prefixes are filled in while the pages are read
        return sorted(p[len(prefix) :].rstrip("/") for p in pages.prefixes)


def open_object_store(uri: ObjectUri) -> ObjectStore:
    return S3Store(uri.bucket, uri.endpoint) if uri.scheme == "s3" else GcsStore(uri.bucket)


def _folder_prefix(key: str) -> str:
    return f"{key}/" if key else ""


def upload_tree(local_dir: str | Path, destination: str, last: tuple[str, ...] = ()) -> list[str]:
    """Copies every file (and empty folder) under ``local_dir`` to ``destination``; returns the keys written.

    Files whose relative path is in ``last`` are written after all the others (e.g. configs after the version
    folders they describe, so a reader never sees a config whose files are still missing).
    """
    local_dir = Path(local_dir)
    target = ObjectUri.parse(destination)
    store = open_object_store(target)
    entries = sorted(local_dir.rglob("*"))
    files = [p for p in entries if p.is_file()]
    files.sort(key=lambda p: p.relative_to(local_dir).as_posix() in last)
    written = []
    for folder in (p for p in entries if p.is_dir() and not any(p.iterdir())):
        key = target.child(folder.relative_to(local_dir).as_posix()).key + "/"
        store.put_empty(key)
        written.append(key)
    for path in files:
        key = target.child(path.relative_to(local_dir).as_posix()).key
        store.upload(path, key)
        written.append(key)
    return written


def download(source: str, destination: str | Path) -> Path:
    """Copies one object, or every object under a prefix, to ``destination``; returns the local file or folder.

    A URI that names an object is a file; otherwise it is taken as a folder (its keys are recreated below
    ``destination``).

    Raises:
        FileNotFoundError: nothing exists at ``source``.
    """
    uri = ObjectUri.parse(source)
    store = open_object_store(uri)
    destination = Path(destination)
    keys = store.list_keys(uri.key)
    if uri.key in keys:
        target = destination / Path(uri.key).name
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(uri.key, target)
        return target
    prefix = _folder_prefix(uri.key)
    inside = [k for k in keys if k.startswith(prefix) and not k.endswith("/")]
    if not inside:
        raise FileNotFoundError(f"nothing found at {source}")
    target = destination / (Path(uri.key).name or uri.bucket)
    for key in inside:
        local = target / key[len(prefix) :]
        local.parent.mkdir(parents=True, exist_ok=True)
        store.download(key, local)
    return target


def fetch(location: str, workdir: str | Path) -> Path:
    """A location as a local path: an object-store URI is downloaded (see :func:`download`) under ``workdir``; a
    local path (a PVC mount included) or ``shared:<file>`` (:func:`eqface.paths.resolve`) is used where it lies.

    Raises:
        FileNotFoundError: nothing exists at ``location``.
    """
    if is_remote(location):
        return download(location, workdir)
    local = paths.resolve(location)
    if not local.exists():
        raise FileNotFoundError(f"nothing found at {location}")
    return local


def list_children(location: str) -> list[str]:
    """Names of the folders directly under ``location`` (a local path or an object-store URI); [] when missing."""
    if not is_remote(location):
        path = Path(location)
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    uri = ObjectUri.parse(location)
    return open_object_store(uri).list_children(_folder_prefix(uri.key))
