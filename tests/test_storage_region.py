"""Each S3 bucket is used in its own region, asked of S3 once per bucket (pyarrow.fs.resolve_s3_region),
so a cluster in one region reads a bucket in another; an endpoint override (MinIO, moto, a VPC
endpoint) is used as given. There is no AWS here: a stand-in answers for S3's HeadBucket."""

import pytest

from raddist import storage
from raddist.errors import StorageError

REGIONS = {"eu-data": "eu-west-1", "us-output": "us-east-1"}


@pytest.fixture
def aws(monkeypatch):
    """AWS as a cluster in us-east-1 sees it: no endpoint override; a stand-in for S3's region lookup."""
    asked = []

    def resolve(bucket):
        asked.append(bucket)
        if bucket not in REGIONS:
            raise OSError(f"When resolving region for bucket '{bucket}': AWS Error NETWORK_CONNECTION during "
                          "HeadBucket operation: curlCode: 6, Could not resolve hostname")
        return REGIONS[bucket]

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setattr(storage, "resolve_region", resolve)
    storage.bucket_region.cache_clear()
    yield asked
    storage.bucket_region.cache_clear()


def test_each_bucket_in_its_own_region_asked_once(aws):
    fs_eu, path = storage.filesystem("s3://eu-data/manifests/chest/manifest.parquet")
    assert fs_eu.region == "eu-west-1" and path == "eu-data/manifests/chest/manifest.parquet"
    fs_us, _ = storage.filesystem("s3://us-output/runs/paper/summary.json")
    assert fs_us.region == "us-east-1"
    for i in range(50):
        assert storage.filesystem(f"s3://eu-data/images/{i}.png")[0].region == "eu-west-1"
    assert aws == ["eu-data", "us-output"]  # one lookup per bucket, however many objects


def test_a_bucket_whose_region_cannot_be_found_is_one_line(aws):
    with pytest.raises(StorageError) as e:
        storage.exists("s3://no-such-bucket/runs/x/summary.json")
    message = str(e.value)
    assert "\n" not in message and message.startswith("s3://no-such-bucket: cannot find the bucket's region")
    assert "cannot connect" in message and "AWS_ENDPOINT_URL_S3" in message


def test_an_endpoint_override_is_used_as_given(aws, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    fs, _ = storage.filesystem("s3://eu-data/x")
    assert fs.region == "eu-central-1" and aws == []  # MinIO and moto have no region lookup
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://bucket.vpce-0a1b.s3.eu-west-1.vpce.amazonaws.com")
    assert storage.filesystem("s3://eu-data/x")[0].region == "eu-central-1" and aws == []
