"""Object-store locations for data and model repositories: real S3 and GCS HTTP APIs served on loopback.

S3 is moto's server (the S3 REST API that boto3 talks to, including ``AWS_ENDPOINT_URL`` as used for MinIO); GCS is
gcp-storage-emulator (the JSON API google-cloud-storage talks to through ``STORAGE_EMULATOR_HOST``). The code under test
is the production code path: boto3 and google-cloud-storage clients, no patching.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from eqface.processes import free_port
from eqface.workflow import storage
from eqface.workflow.configure import build_config, preset_form
from eqface.workflow.dataset import data_config, prepare_dataset

_buckets = itertools.count()


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def gcs_endpoint():
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_bucket(moto_endpoint, monkeypatch) -> str:
    import boto3

    for key, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    name = f"bucket-{next(_buckets)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture()
def gs_bucket(gcs_endpoint, monkeypatch) -> str:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    name = f"bucket-{next(_buckets)}"
    gcs.Client(project="test", credentials=AnonymousCredentials()).create_bucket(name)
    return f"gs://{name}"


@pytest.fixture(params=["s3", "gs"])
def bucket(request) -> str:
    return request.getfixturevalue(f"{request.param}_bucket")


def make_tree(root: Path) -> Path:
    (root / "a" / "1").mkdir(parents=True)
    (root / "a" / "1" / "model.onnx").write_bytes(b"\x00onnx")
    (root / "a" / "config.pbtxt").write_text('name: "a"')
    (root / "b" / "1").mkdir(parents=True)  # empty, as an ensemble's version folder
    return root


def test_upload_list_and_download_a_tree(bucket, tmp_path):
    tree = make_tree(tmp_path / "repo")
    written = storage.upload_tree(tree, f"{bucket}/models/", last=("a/config.pbtxt",))
    assert written[-1] == "models/a/config.pbtxt"  # configs last
    assert "models/b/1/" in written  # the empty folder survives as a marker
    assert storage.list_children(f"{bucket}/models") == ["a", "b"]
    assert storage.list_children(f"{bucket}/models/b") == ["1"]
    assert storage.list_children(f"{bucket}/nothing") == []
    copy = storage.download(f"{bucket}/models/a", tmp_path / "copy")
    assert (copy / "1" / "model.onnx").read_bytes() == b"\x00onnx"
    one = storage.download(f"{bucket}/models/a/config.pbtxt", tmp_path / "one")
    assert one.read_text() == 'name: "a"'


def test_missing_objects_are_reported(bucket, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing found"):
        storage.download(f"{bucket}/no/such/thing.npz", tmp_path)


@pytest.mark.parametrize("uri", ["s3:/bucket", "gs://", "http://x/y", "/local/path", "s3://minio:9000/"])
def test_bad_uris(uri):
    with pytest.raises(ValueError):
        storage.ObjectUri.parse(uri)


@pytest.mark.parametrize(
    ("uri", "endpoint", "bucket", "key"),
    [
        ("s3://models/eqface", "", "models", "eqface"),
        ("s3://minio.example:9000/models/eqface/", "http://minio.example:9000", "models", "eqface"),
        ("s3://https://minio.example:9000/models/eqface", "https://minio.example:9000", "models", "eqface"),
        ("gs://models", "", "models", ""),
    ],
)
def test_uris_in_tritons_forms(uri, endpoint, bucket, key):
    parsed = storage.ObjectUri.parse(uri)
    assert (parsed.endpoint, parsed.bucket, parsed.key) == (endpoint, bucket, key)


def test_an_s3_endpoint_in_the_uri_needs_no_environment(moto_endpoint, monkeypatch, tmp_path):
    """Triton's s3://host:port/bucket/path reaches the same store as AWS_ENDPOINT_URL would."""
    import boto3

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket="triton-form")
    host = moto_endpoint.removeprefix("http://")
    storage.upload_tree(make_tree(tmp_path / "repo"), f"s3://{host}/triton-form/models")
    assert storage.list_children(f"s3://{moto_endpoint}/triton-form/models") == ["a", "b"]


def test_a_pack_in_an_object_store_is_downloaded_and_packed(bucket, tmp_path):
    labels = np.repeat(np.arange(6), 4)
    images = np.random.default_rng(0).integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    pack = tmp_path / "faces.npz"
    np.savez(pack, images=images, identity=labels)
    storage.upload_tree(tmp_path, f"{bucket}/data")
    form = {
        **preset_form("test"),
        "data_source": "npz",
        "data_location": f"{bucket}/data/faces.npz",
        "eval_identities": 2,
    }
    prepared = prepare_dataset(build_config("test", form), tmp_path / "artifact")
    assert prepared.packed and prepared.images == 24 and prepared.identities == 6
    assert prepared.location == f"{bucket}/data/faces.npz"
    from eqface.data import build_source

    source = build_source(data_config(tmp_path / "artifact"))
    np.testing.assert_array_equal(source.image(5), images[5])


def test_object_store_data_cannot_be_referenced(s3_bucket, tmp_path):
    form = {**preset_form("test"), "data_source": "npz", "data_location": f"{s3_bucket}/faces.npz"}
    with pytest.raises(ValueError, match="object store"):
        prepare_dataset(build_config("test", form), tmp_path, materialize="reference")


def test_deploy_writes_a_new_version_to_an_object_store(bucket, tiny_onnx, tmp_path):
    from eqface.workflow.deploy import deploy, existing_versions

    repository = f"{bucket}/triton/models"
    first = deploy(tiny_onnx, repository, variant="production")
    second = deploy(tiny_onnx, repository, variant="production")
    assert (first.version, second.version) == (1, 2)
    assert existing_versions(repository) == [1, 2]
    copy = storage.download(repository, tmp_path)
    assert (copy / "eqface_onnx" / "2" / "model.onnx").read_bytes() == Path(tiny_onnx).read_bytes()
    assert 'backend: "onnxruntime"' in (copy / "eqface_onnx" / "config.pbtxt").read_text()
    assert storage.list_children(f"{repository}/eqface") == ["1", "2"]  # the ensemble's empty version folders
    with pytest.raises(FileExistsError):
        deploy(tiny_onnx, repository, version=2)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    import torch

    from eqface.config import preset as make_preset
    from eqface.contract import InferenceSpec
    from eqface.export.onnx import export_onnx
    from eqface.models import build_model

    cfg = make_preset("test").model
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(build_model(cfg), InferenceSpec(tuple(cfg.image_size), cfg.embedding_size), path)
    return path


def test_fetch_gives_every_location_form_as_a_local_path(bucket, tmp_path, monkeypatch):
    """One function for the pipelines' URIs: object stores are downloaded, local and shared: paths used in place."""
    (tmp_path / "models").mkdir()
    onnx = tmp_path / "models" / "arcface.onnx"
    onnx.write_bytes(b"\x00onnx")
    storage.upload_tree(tmp_path / "models", f"{bucket}/weights")
    fetched = storage.fetch(f"{bucket}/weights/arcface.onnx", tmp_path / "work")
    assert fetched == tmp_path / "work" / "arcface.onnx" and fetched.read_bytes() == b"\x00onnx"
    assert storage.fetch(str(onnx), tmp_path / "unused") == onnx
    monkeypatch.setenv("EQFACE_SHARED_DATA", str(tmp_path))
    assert storage.fetch("shared:models/arcface.onnx", tmp_path / "unused") == onnx
    assert not (tmp_path / "unused").exists()
    for missing in (str(tmp_path / "none.onnx"), f"{bucket}/weights/none.onnx"):
        with pytest.raises(FileNotFoundError, match="none.onnx"):
            storage.fetch(missing, tmp_path / "work")


def test_the_byor_import_step_reads_its_recogniser_from_an_object_store(s3_bucket, tmp_path):
    from eqface.byor.recogniser import Recogniser
    from eqface.config import config_from_dict
    from eqface.workflow.byor import ByorForm, data_config_json, import_step
    from tests.support.byor import export_backbone, tiny_iresnet

    (tmp_path / "up").mkdir()
    export_backbone(tiny_iresnet(), tmp_path / "up" / "tiny.onnx")
    storage.upload_tree(tmp_path / "up", f"{s3_bucket}/recognisers")
    cfg = config_from_dict(json.loads(data_config_json("synthetic", "", 0, 2)))
    prepare_dataset(cfg, tmp_path / "dataset", "pack")
    uri = f"{s3_bucket}/recognisers/tiny.onnx"
    metadata = import_step(uri, tmp_path / "dataset", ByorForm(check_normalisation=False), tmp_path / "imported")
    assert metadata["source_uri"] == uri and metadata["embedding_size"] == 32
    assert Recogniser(tmp_path / "imported").manifest.tap_shape == (16, 7, 7)
