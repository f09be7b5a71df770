"""The storage layer behaves the same on a local folder and on S3 (a local moto server)."""

import pytest
import tensorflow as tf

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from ecdctr.io import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("bucket") + "/root"


def test_files_and_folders_round_trip(root):
    assert storage.listdir(root) == [] and not storage.exists(root)
    storage.write_text(storage.join(root, "a", "x.txt"), "héllo")
    storage.write_bytes(storage.join(root, "a", "sub", "y.bin"), b"\x00\x01")
    assert storage.read_text(storage.join(root, "a", "x.txt")) == "héllo"
    assert storage.listdir(root) == ["a"] and storage.isdir(storage.join(root, "a"))
    assert storage.listdir(storage.join(root, "a")) == ["sub", "x.txt"]
    assert storage.glob(storage.join(root, "a", "*.txt")) == [storage.join(root, "a", "x.txt")]
    assert storage.files_under(storage.join(root, "a")) == ["sub/y.bin", "x.txt"]

    storage.copytree(storage.join(root, "a"), storage.join(root, "b"), last=("x.txt",))
    storage.rename(storage.join(root, "b"), storage.join(root, "c"))
    assert storage.listdir(root) == ["a", "c"]
    assert storage.read_bytes(storage.join(root, "c", "sub", "y.bin")) == b"\x00\x01"
    with pytest.raises(tf.errors.AlreadyExistsError, match="exists"):  # never overwrites
        storage.rename(storage.join(root, "a", "x.txt"), storage.join(root, "c", "x.txt"))

    storage.rmtree(storage.join(root, "c"))
    storage.remove(storage.join(root, "a", "x.txt"))
    storage.remove(storage.join(root, "a", "gone.txt"))
    assert storage.listdir(root) == ["a"] and storage.files_under(root) == ["a/sub/y.bin"]


def test_uri_helpers():
    assert storage.scheme("s3://b/x") == "s3" and storage.scheme("/tmp/x") == ""
    assert storage.is_remote("hdfs://nn/x") and not storage.is_remote("file:///x")
    assert storage.join("s3://b/x", "y", "z") == "s3://b/x/y/z"
    assert storage.dirname("s3://b/x/y/") == "s3://b/x" and storage.basename("s3://b/x/y/") == "y"


def test_aws_variables_reach_tensorflow_io_and_beam(monkeypatch):
    for key in ("S3_ENDPOINT", "S3_USE_HTTPS", "S3_VERIFY_SSL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    storage.configure_s3()
    import os

    assert (os.environ["S3_ENDPOINT"], os.environ["S3_USE_HTTPS"]) == ("http://127.0.0.1:9000", "0")
    assert storage.beam_s3_options() == [
        "--s3_endpoint_url=http://127.0.0.1:9000", "--s3_access_key_id=id",
        "--s3_secret_access_key=secret", "--s3_region_name=eu-west-1", "--s3_disable_ssl"]


def test_a_missing_file_is_file_not_found_as_with_open(root):
    for read in (storage.read_text, storage.read_bytes, storage.mtime):
        with pytest.raises(FileNotFoundError):
            read(storage.join(root, "nothing.json"))
