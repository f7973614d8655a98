import os
import re
import time
from collections import Counter, defaultdict

import numpy as np
import pydicom
import pytest

from raddist import storage
from raddist.data import manifest
from raddist.data.contract import PreprocessContract
from raddist.data.synthetic import BRAIN_CLASSES, CHEST_FINDINGS, SUBGROUPS, truncate_file, write_synthetic
from raddist.data.transforms import decode
from raddist.errors import InputError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The default dataset (what the demo uses), with how long it took to write."""
    out = str(tmp_path_factory.mktemp("synthetic-default"))
    start = time.perf_counter()
    paths = write_synthetic(out)
    return paths, time.perf_counter() - start


def rows(path):
    return manifest.load(path).to_pylist()


def test_manifests_are_valid_and_relative(data):
    paths, _ = data
    assert set(paths) == {"chest", "brain_mri"}
    chest, brain = manifest.load(paths["chest"]), manifest.load(paths["brain_mri"])
    manifest.validate(chest, paths["chest"], label_columns=CHEST_FINDINGS, task_type="multilabel")
    manifest.validate(brain, paths["brain_mri"], label_columns=["label"], task_type="multiclass", num_classes=3)
    assert chest.column_names == ["sample_id", "uri", "patient_id", "split", "modality", *CHEST_FINDINGS, *SUBGROUPS]
    for col, values in SUBGROUPS.items():  # coarse, one value per patient
        assert set(chest[col].to_pylist()) <= set(values)
        assert len(set(zip(chest["patient_id"].to_pylist(), chest[col].to_pylist()))) == len(set(chest["patient_id"].to_pylist()))
    assert set(chest["modality"].to_pylist()) == {"CR"} and set(brain["modality"].to_pylist()) == {"MR"}
    raw = storage.read_parquet(paths["chest"])["uri"].to_pylist()
    assert all(re.fullmatch(r"images/p\d{4}_s\d\.dcm", u) for u in raw)
    assert all(os.path.exists(u) for u in chest["uri"].to_pylist() + brain["uri"].to_pylist())


@pytest.mark.parametrize("task", ["chest", "brain_mri"])
def test_two_or_three_images_per_patient_and_patient_level_splits(data, task):
    table = rows(data[0][task])
    per_patient = Counter(r["patient_id"] for r in table)
    assert len(per_patient) == 60 and set(per_patient.values()) <= {2, 3}
    assert len(set(per_patient.values())) == 2  # both occur
    split_of = {r["patient_id"]: r["split"] for r in table}
    assert Counter(split_of.values()) == {"train": 36, "val": 12, "test": 12}
    assert all(re.fullmatch(r"p\d{4}", p) for p in per_patient)


def test_label_prevalence_and_independence(data):
    table = rows(data[0]["chest"])
    labels = np.array([[r[f] for f in CHEST_FINDINGS] for r in table])
    assert ((labels.mean(0) > 0.15) & (labels.mean(0) < 0.45)).all(), labels.mean(0)
    corr = np.corrcoef(labels.T)
    assert np.abs(corr[np.triu_indices(4, 1)]).max() < 0.3
    classes = Counter(r["label"] for r in rows(data[0]["brain_mri"]))
    assert set(classes) == {0, 1, 2} and min(classes.values()) > 0.15 * sum(classes.values())
    assert len(BRAIN_CLASSES) == 3


def test_dicom_headers_look_like_a_real_export_and_stay_out_of_the_manifest(data):
    table = rows(data[0]["chest"])
    ids_of = defaultdict(set)
    photometric, studies = Counter(), set()
    for r in table:
        ds = pydicom.dcmread(r["uri"])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "CR" and ds.BitsStored == 12 and ds.PixelRepresentation == 0
        assert re.fullmatch(r"DOE\^(JANE|JOHN)-\d+", str(ds.PatientName))
        assert re.fullmatch(r"PID-\d{8}", ds.PatientID) and re.fullmatch(r"\d{8}", ds.PatientBirthDate)
        assert ds.InstitutionName == "SYNTHETIC GENERAL HOSPITAL" and ds.AccessionNumber
        assert ds.pixel_array.max() <= 4095 and float(ds.WindowWidth) > 0
        for value in (ds.PatientID, str(ds.PatientName), ds.AccessionNumber):
            assert value not in r["sample_id"] and value not in r["patient_id"] and value not in r["uri"]
        ids_of[r["patient_id"]].add(ds.PatientID)
        photometric[ds.PhotometricInterpretation] += 1
        studies.add(ds.StudyInstanceUID)
    assert all(len(v) == 1 for v in ids_of.values())  # one PatientID per patient...
    assert len({next(iter(v)) for v in ids_of.values()}) > 55  # ...and (almost surely) distinct ones
    assert len(studies) == len(table)  # each image is its own study
    assert photometric["MONOCHROME1"] > 10 and photometric["MONOCHROME2"] > 50


def test_monochrome1_files_store_inverted_pixels_but_display_the_same(data):
    normal = [r for r in rows(data[0]["chest"]) if not (r["opacity"] or r["effusion"] or r["nodule"])]
    contract = PreprocessContract(size=64)
    seen = set()
    for r in normal:
        ds = pydicom.dcmread(r["uri"])
        stored = ds.pixel_array[104:120, 76:92].mean()  # around the right lung's centre, at 256 px
        m1 = ds.PhotometricInterpretation == "MONOCHROME1"
        center = float(ds.WindowCenter)
        assert (stored > center) if m1 else (stored < center)  # aerated lung attenuates little
        shown = decode(r["uri"], storage.read_bytes(r["uri"]), contract)[26:30, 19:23].mean()
        assert shown < 90  # ...and is displayed dark either way
        seen.add(m1)
    assert seen == {True, False}


def test_brain_images_are_8bit_grayscale_png(data):
    from PIL import Image

    for r in rows(data[0]["brain_mri"])[:10]:
        with Image.open(r["uri"]) as img:
            assert img.format == "PNG" and img.mode == "L" and img.size == (256, 256)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    runs = {name: write_synthetic(str(tmp_path / name), seed=seed, n_patients=4, size=64)
            for name, seed in (("a", 3), ("b", 3), ("c", 4))}

    def snapshot(paths):
        tables = {k: storage.read_parquet(v) for k, v in paths.items()}
        files = {k: [storage.read_bytes(u) for u in manifest.load(v)["uri"].to_pylist()] for k, v in paths.items()}
        return tables, files

    (ta, fa), (tb, fb), (tc, fc) = (snapshot(runs[n]) for n in "abc")
    for task in ("chest", "brain_mri"):
        assert ta[task].equals(tb[task])
        assert fa[task] == fb[task]
        assert fa[task] != fc[task][: len(fa[task])]


def test_truncated_synthetic_image_is_an_input_error(tmp_path):
    paths = write_synthetic(str(tmp_path), seed=1, n_patients=2, size=64)
    for task in paths:
        uri = manifest.load(paths[task])["uri"][0].as_py()
        truncate_file(uri, 0.5)
        with pytest.raises(InputError) as e:
            decode(uri, storage.read_bytes(uri), PreprocessContract(size=32))
        assert e.value.uri == uri


# ----------------------------------------------------------------------------- the labels carry signal

def simple_features(uris) -> np.ndarray:
    """16x16 downsampled pixels (global shape and brightness) + pooled features of a random-init
    small CNN on a high-passed 128 px image (small local structures anywhere, e.g. a nodule)."""
    import torch

    def load(size):
        images = [decode(u, storage.read_bytes(u), PreprocessContract(size=size)) for u in uris]
        return np.stack(images) / np.float32(255)

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 5, 2, 2), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, 1, 1), torch.nn.ReLU())
    x = torch.from_numpy(load(128)).float()[:, None]
    x = x - torch.nn.functional.avg_pool2d(x, 9, 1, 4, count_include_pad=False)
    with torch.no_grad():
        f = net(x)
    pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1).numpy()
    return np.hstack([load(16).reshape(len(uris), -1), pooled])


def probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))


def test_chest_findings_are_learnable_per_finding(data):
    from sklearn.metrics import roc_auc_score

    table = rows(data[0]["chest"])
    x = simple_features([r["uri"] for r in table])
    split = np.array([r["split"] for r in table])
    train, test = split != "test", split == "test"
    aurocs = {}
    for finding in CHEST_FINDINGS:
        y = np.array([r[finding] for r in table])
        assert 0 < y[test].sum() < test.sum()
        aurocs[finding] = roc_auc_score(y[test], probe().fit(x[train], y[train]).predict_proba(x[test])[:, 1])
    assert min(aurocs.values()) > 0.7, aurocs


def test_brain_classes_are_learnable(data):
    table = rows(data[0]["brain_mri"])
    x = simple_features([r["uri"] for r in table])
    y = np.array([r["label"] for r in table])
    split = np.array([r["split"] for r in table])
    train, test = split != "test", split == "test"
    accuracy = (probe().fit(x[train], y[train]).predict(x[test]) == y[test]).mean()
    assert accuracy > 0.6, accuracy  # chance is 1/3


def test_brain_mri_site_b_is_another_hospital(tmp_path):
    """The demo's external test set: other patients, the label column named otherwise, another scanner."""
    import pyarrow.parquet as pq
    from PIL import Image

    from raddist.data.synthetic import write_brain_mri

    home = pq.read_table(write_brain_mri(str(tmp_path / "a"), n_patients=6, size=64)).to_pandas()
    away = pq.read_table(write_brain_mri(str(tmp_path / "b"), n_patients=6, size=64, site_b=True)).to_pandas()
    assert "tumor_type" in away and "label" not in away and "sex" not in away
    assert set(away["patient_id"]).isdisjoint(home["patient_id"]) and set(away["tumor_type"]) <= {0, 1, 2}
    pixels = lambda d, df: np.stack([np.asarray(Image.open(tmp_path / d / u)) for u in df["uri"]])  # noqa: E731
    a, b = pixels("a", home), pixels("b", away)
    assert b[:, :8, :8].mean() > a[:, :8, :8].mean() + 15 and b.std() < a.std()  # brighter background, less contrast
