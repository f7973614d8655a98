"""Subgroup columns from DICOM headers, as coarse categories only (issue 26: a task's `subgroups`).

    raddist datasets groups MANIFEST --out OUT      # OUT: the manifest with the columns added

Per DICOM row, from its header alone (pydicom, stop_before_pixels):
  sex           (0010,0040) PatientSex: F or M; O and anything else unknown
  age_band      (0010,1010) PatientAge (nnnD/W/M/Y) in the catalog's bands (catalog.common.AGE_BANDS)
  manufacturer  (0008,0070) Manufacturer: its vendor family (VENDORS), 'other' for one not listed
  site          (0008,0080) InstitutionName: never written as such (it names a hospital); a keyed
                pseudonym, site_<6 hex>, under the deployment's salt (raddist.privacy)
A value the header lacks, or a row that is not DICOM (PNG, NIfTI), stays null: the subgroup
analysis reads it as "unknown". A header that cannot be read is one line naming its row.
"""

from __future__ import annotations

import io
from typing import Dict, Optional

import pyarrow as pa

from raddist import storage
from raddist.data.catalog.common import age_band, sex
from raddist.errors import InputError

COLUMNS = ("sex", "age_band", "manufacturer", "site")
# the first word of Manufacturer (upper case) -> its vendor family
VENDORS = {"SIEMENS": "siemens", "GE": "ge", "PHILIPS": "philips", "TOSHIBA": "canon", "TOSHIBA_MEC": "canon",
           "CANON": "canon", "FUJI": "fujifilm", "FUJIFILM": "fujifilm", "AGFA": "agfa", "CARESTREAM": "carestream",
           "KODAK": "carestream", "KONICA": "konica_minolta", "HOLOGIC": "hologic", "SAMSUNG": "samsung",
           "SHIMADZU": "shimadzu", "HITACHI": "hitachi", "PLANMED": "planmed", "UIH": "united_imaging"}
AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def vendor(value) -> Optional[str]:
    words = str(value or "").replace(",", " ").split()
    return VENDORS.get(words[0].upper(), "other") if words else None


def age_years(value) -> Optional[float]:
    """A DICOM age string ('045Y', '006M') in years; None when absent or malformed."""
    text = str(value or "").strip().upper()
    if len(text) < 2 or text[-1] not in AGE_UNITS or not text[:-1].isdigit():
        return None
    return int(text[:-1]) * AGE_UNITS[text[-1]]


def header_groups(data: bytes, salt: str) -> Dict[str, Optional[str]]:
    import pydicom
    import pydicom.errors

    from raddist.privacy import pseudonym

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:  # no preamble: a bare dataset, if it has real tags
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        if "SOPClassUID" not in ds:
            raise
    institution = str(ds.get("InstitutionName", "") or "").strip()
    return {"sex": sex(ds.get("PatientSex")), "age_band": age_band(age_years(ds.get("PatientAge"))),
            "manufacturer": vendor(ds.get("Manufacturer")),
            "site": "site_" + pseudonym(institution.upper(), salt)[:6] if institution else None}


def add_groups(manifest_uri: str, out_uri: str, salt: str) -> Dict[str, dict]:
    """Write out_uri: the manifest with COLUMNS filled from its DICOM rows' headers (a column the
    manifest has already is kept where the header says nothing). Returns each column's counts."""
    from raddist.data.manifest import load

    table = storage.read_parquet(manifest_uri)
    uris = load(manifest_uri)["uri"].to_pylist()  # resolved against the manifest's directory
    found = {c: [None] * table.num_rows for c in COLUMNS}
    for row, uri in enumerate(uris):
        if not str(uri).lower().endswith((".dcm", ".dicom")):
            continue
        try:
            groups = header_groups(storage.read_bytes(uri), salt)
        except Exception as e:  # noqa: BLE001 - the row is named, the cause is one line
            raise InputError(f"{manifest_uri} row {row}", f"DICOM header unreadable ({type(e).__name__})") from None
        for column, value in groups.items():
            found[column][row] = value
    for column, values in found.items():
        if column in table.column_names:
            old = table[column].to_pylist()
            values = [v if v is not None else o for v, o in zip(values, old)]
            table = table.drop_columns([column])
        table = table.append_column(column, pa.array(values, pa.string()))
    storage.write_parquet(out_uri, table.replace_schema_metadata(table.schema.metadata))
    return {c: {str(k): found[c].count(k) for k in sorted(set(found[c]), key=str)} for c in COLUMNS}
