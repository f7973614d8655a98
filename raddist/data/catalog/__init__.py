"""The dataset catalog: each public dataset's official layout -> a manifest with patient-level splits.

    list_datasets()                                   one dict per registered dataset
    prepare(name, source, dest, seed=0, **opts)       -> the URI of dest/manifest.parquet

One module per dataset registers a DatasetInfo (msd.py registers three). `source` is the folder
of the official release as unpacked, `dest` where the manifest (and anything decoded once, such as
combined masks) is written; either may be a local path or a URI (s3://...), as everything goes
through raddist.storage. Images that need no decoding are referenced in place, so the source must
stay where it is; files under dest are referenced relative to the manifest.
The manifest's Parquet schema metadata (key b"raddist", read it with read_metadata) records the
dataset, task type, label columns, class names, preprocessing hints, seed, options, and a sha256
of each split's sorted sample ids, so two runs can check they evaluate on the same split.
"""

from __future__ import annotations

import inspect
from typing import Dict, List

from raddist import storage
from raddist.data.catalog import (
    amos, brain_tumor_figshare, btcv, chexpert, montgomery, msd, nih_chestxray14, sarscov2_ct, shenzhen,
)
from raddist.data.catalog.common import (  # noqa: F401  (the catalog's public names)
    MANIFEST_NAME, METADATA_KEY, CatalogError, DatasetInfo, read_metadata, split_hash,
)

_REGISTRY: Dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        nih_chestxray14.INFO, chexpert.INFO, brain_tumor_figshare.INFO, sarscov2_ct.INFO,
        montgomery.INFO, shenzhen.INFO, btcv.INFO, amos.INFO, *msd.INFOS.values(),
    )
}


def get(name: str) -> DatasetInfo:
    if name not in _REGISTRY:
        raise CatalogError(f"unknown dataset '{name}'; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def options(name: str) -> Dict[str, object]:
    """The dataset-specific options of prepare, with their defaults."""
    params = inspect.signature(get(name).prepare).parameters.values()
    return {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY}


def list_datasets() -> List[dict]:
    return [dict(info.to_dict(), options=options(name)) for name, info in _REGISTRY.items()]


def prepare(name: str, source: str, dest: str, seed: int = 0, **opts) -> str:
    """Write dest/manifest.parquet for dataset `name` from its official layout under `source`."""
    allowed = options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise CatalogError(f"{name}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    return get(name).prepare(storage.normalize(source), storage.normalize(dest), seed=seed, **opts)
