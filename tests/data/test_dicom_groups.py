"""Subgroup columns from real DICOM headers (pydicom-data), coarse and with no identifying value."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydicom.data import get_testdata_file

from raddist.cli import main
from raddist.data.dicom_groups import add_groups, age_years, vendor
from raddist.errors import InputError

# (file, what its header holds): Manufacturer, InstitutionName, PatientSex, PatientAge
FILES = {"CT_small.dcm": ("ge", True, None, "0-17"),          # GE MEDICAL SYSTEMS, JFK IMAGING CENTER, O, 000Y
         "MR_small.dcm": ("canon", True, "F", None),           # TOSHIBA_MEC, TOSHIBA, F, -
         "JPEG2000.dcm": ("ge", True, "M", None),              # GE Medical Systems, Hospital Name 12345, M, ''
         "rtdose.dcm": ("other", False, None, None)}           # Manufacturer name here, -, O, -


def _manifest(tmp_path):
    rows = []
    for i, name in enumerate(FILES):
        shutil.copy(get_testdata_file(name), tmp_path / name)
        rows.append({"sample_id": f"s{i}", "uri": name, "patient_id": f"p{i}", "split": "test"})
    (tmp_path / "mask.png").write_bytes(b"not read")
    rows.append({"sample_id": "s9", "uri": "mask.png", "patient_id": "p9", "split": "test"})  # not DICOM: nulls
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    return str(tmp_path / "manifest.parquet")


def test_groups_are_coarse_and_the_site_is_a_pseudonym(tmp_path, monkeypatch, capsys):
    manifest = _manifest(tmp_path)
    counts = add_groups(manifest, str(tmp_path / "out.parquet"), salt="s1")
    out = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert out["manufacturer"] == [f[0] for f in FILES.values()] + [None]
    assert out["sex"] == [f[2] for f in FILES.values()] + [None]
    assert out["age_band"] == [f[3] for f in FILES.values()] + [None]
    sites = out["site"]
    assert [s is not None for s in sites] == [f[1] for f in FILES.values()] + [False]
    assert all(s.startswith("site_") and len(s) == 11 for s in sites if s)
    assert sites[0] != sites[1]  # two institutions, two pseudonyms
    text = (tmp_path / "out.parquet").read_bytes()
    assert b"JFK" not in text and b"Hospital Name" not in text and b"TOSHIBA" not in text
    assert counts["manufacturer"] == {"canon": 1, "ge": 2, "other": 1, "None": 1}
    # another salt, other pseudonyms; the CLI writes the same columns under the deployment's salt
    add_groups(manifest, str(tmp_path / "other.parquet"), salt="s2")
    assert pq.read_table(tmp_path / "other.parquet")["site"].to_pylist()[0] != sites[0]
    monkeypatch.setenv("RADDIST_SALT", "s1")
    assert main(["datasets", "groups", manifest, "--out", str(tmp_path / "cli.parquet")]) == 0
    assert pq.read_table(tmp_path / "cli.parquet")["site"].to_pylist() == sites
    assert '"ge": 2' in capsys.readouterr().out


def test_an_unreadable_header_names_its_row(tmp_path):
    manifest = _manifest(tmp_path)
    (tmp_path / "MR_small.dcm").write_bytes(b"")  # row 1
    with pytest.raises(InputError, match=r"manifest.parquet row 1: DICOM header unreadable"):
        add_groups(manifest, str(tmp_path / "out.parquet"), salt="s1")


def test_dicom_values_parse():
    assert [age_years(v) for v in ("045Y", "006M", "003W", "010D")] == pytest.approx([45, 0.5, 7 * 3 / 365.25, 10 / 365.25])
    assert [age_years(v) for v in ("", None, "45", "0X5Y")] == [None] * 4
    assert [vendor(v) for v in ("SIEMENS", "Philips Medical Systems", "GE HEALTHCARE", "Acme", "", None)] == \
        ["siemens", "philips", "ge", "other", None, None]
