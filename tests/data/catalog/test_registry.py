"""The registry, and prepare to and from S3 (a real HTTP endpoint, served by moto)."""

import json
import os

import boto3
import pytest

from raddist import storage
from raddist.data import catalog
from tests.data.catalog import check_manifest, write_montgomery, write_sars
from tests.helpers import package_modules

NAMES = {"nih_chestxray14", "chexpert", "brain_tumor_figshare", "sarscov2_ct", "montgomery", "shenzhen",
         "btcv", "amos", "msd_heart", "msd_hippocampus", "msd_spleen"}


def test_list_datasets():
    listed = catalog.list_datasets()
    assert {d["name"] for d in listed} == NAMES
    json.dumps(listed)  # the CLI prints it with --json
    for d in listed:
        assert d["task_type"] in ("multilabel", "binary", "multiclass", "segmentation")
        assert d["modality"] in ("DX", "CT", "MR") and d["unit"] in ("image", "slice", "volume")
        assert d["classes"] and d["source_url"].startswith("http") and d["license"] and d["reference_split"]
        assert (d["task_type"] == "segmentation") == (not d["labels"])


@pytest.mark.parametrize("module", sorted(set(package_modules(catalog)) - {"raddist.data.catalog.common"}))
def test_each_adapter_module_on_disk_is_registered(module):
    import importlib

    mod = importlib.import_module(module)
    infos = [v for v in vars(mod).values() if isinstance(v, catalog.DatasetInfo)]
    infos += [i for v in vars(mod).values() if isinstance(v, dict) for i in v.values() if isinstance(i, catalog.DatasetInfo)]
    assert infos, f"{mod.__file__} defines no DatasetInfo (INFO, or INFOS for several)"
    for info in infos:
        assert info.name in NAMES and catalog.get(info.name) is info, (
            f"{module}: {info.name} is not in raddist.data.catalog's registry")


def test_unknown_dataset_and_option(tmp_path):
    with pytest.raises(catalog.CatalogError, match="known: .*chexpert"):
        catalog.prepare("chexpert14", str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(catalog.CatalogError, match="allowed: \\['val_count'\\]"):
        catalog.prepare("nih_chestxray14", str(tmp_path), str(tmp_path / "out"), val_size=3)
    with pytest.raises(catalog.CatalogError, match="source not found"):
        catalog.prepare("btcv", str(tmp_path / "nope"), str(tmp_path / "out"))


def test_prepare_local_source_to_s3(tmp_path, s3_bucket):
    dest = f"s3://{s3_bucket}/prepared/montgomery"
    uri = catalog.prepare("montgomery", write_montgomery(tmp_path / "src"), dest, val_size=1, test_size=1)
    assert uri == f"{dest}/manifest.parquet"
    frame, meta = check_manifest(uri, "montgomery")  # read back through raddist.storage
    assert frame["mask_uri"].str.startswith(f"{dest}/masks/").all()  # masks written to S3
    assert meta["split_counts"] == {"train": 4, "val": 1, "test": 1}


def test_prepare_s3_source_to_s3(tmp_path, s3_bucket, moto_endpoint):
    local = write_sars(tmp_path / "sars")
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    for folder, _, names in os.walk(local):
        for name in names:
            path = os.path.join(folder, name)
            client.upload_file(path, s3_bucket, "raw/sars/" + os.path.relpath(path, local))
    uri = catalog.prepare("sarscov2_ct", f"s3://{s3_bucket}/raw/sars", f"s3://{s3_bucket}/out/sars/",
                          val_size=2, test_size=2)
    frame, meta = check_manifest(uri, "sarscov2_ct")
    assert frame["uri"].str.startswith(f"s3://{s3_bucket}/raw/sars/").all()
    # the same split as when prepared from a local copy
    local_uri = catalog.prepare("sarscov2_ct", local, str(tmp_path / "out"), val_size=2, test_size=2)
    assert catalog.read_metadata(local_uri)["split_hashes"] == meta["split_hashes"]
    assert storage.read_bytes(frame["uri"].iloc[0])[:4] == b"\x89PNG"
