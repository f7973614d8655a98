"""Config files: a shipped config's name or a path/URI, read as YAML, with ${VARS} from the
environment and --option overrides, then parsed into the spec (raddist.spec)."""

from __future__ import annotations

import difflib
import os
import re
from typing import List, Optional, Tuple

import yaml

from raddist.errors import ConfigError, StorageError
from raddist.spec import SweepSpec, parse

SHIPPED_CONFIGS = ("demo", "paper", "paper-recommended", "radiology-2026", "smoke")  # raddist/configs/<name>.yaml, installed with the package


def config_uri(name_or_uri: str) -> str:
    """A config's URI: the name of a config shipped with raddist, or a path or URI as given. A path
    wins over a shipped name only when it is a file: a folder `paper` (a manuscript) does not hide
    the shipped `paper`."""
    from raddist import storage

    if name_or_uri in SHIPPED_CONFIGS and not storage.is_file(name_or_uri):
        return os.path.join(os.path.dirname(__file__), "configs", f"{name_or_uri}.yaml")
    return name_or_uri


def _read_config(uri: str):
    """The YAML document at uri; whatever goes wrong reading it is one line naming it."""
    from raddist import storage

    if not storage.exists(uri):
        close = difflib.get_close_matches(os.path.basename(uri).removesuffix(".yaml"), SHIPPED_CONFIGS, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"a path, a URI, or one of {list(SHIPPED_CONFIGS)}"
        raise ConfigError(f"config not found: {uri}; {hint}")
    if not storage.is_file(uri):
        raise ConfigError(f"{uri} is a directory, not a config file; a YAML file, or one of {list(SHIPPED_CONFIGS)}")
    try:
        return yaml.safe_load(storage.read_text(uri))
    except yaml.YAMLError as e:
        raise ConfigError(f"{uri}: not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{uri}: not a text file (not UTF-8), so not a YAML config") from None
    except StorageError as e:
        raise ConfigError(f"config {e}") from None
    except OSError as e:
        raise ConfigError(f"{uri}: cannot be read: {e.strerror or type(e).__name__}") from None


def load(uri: str, overrides: Optional[dict] = None) -> SweepSpec:
    """The spec of a config file (or a shipped config's name), with ${VARS} from the environment.

    overrides: dotted field -> value, applied before the variables are expanded (so --output
    replaces a storage.output of ${OUTPUT} whether or not OUTPUT is set). A variable that is not
    set stays as written and is recorded in spec.unset_vars: planning reads no data and goes on,
    a run refuses it (require_vars) before any work.
    """
    uri = config_uri(uri)
    data = _read_config(uri)
    data = data if data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: the top level must be a mapping of keys, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        _set_path(data, key, value)
    unset: List[Tuple[str, str]] = []
    data = _expand_vars(data, "", unset)
    spec = parse(data, source=uri)
    spec._unset_vars = unset
    return spec


def require_vars(spec: SweepSpec) -> None:
    """Refuse a spec that names an environment variable the environment does not set."""
    if spec.unset_vars:
        field, var = spec.unset_vars[0]
        raise ConfigError(f"{field}: ${{{var}}} is not set in the environment; export it (on a cluster: "
                          f"--runtime-env-json '{{\"env_vars\": {{\"{var}\": \"...\"}}}}')")


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _expand_vars(obj, where: str, unset: List[Tuple[str, str]]):
    """${VAR} in string values, so one config serves laptop and cluster (e.g. ${DATA}); every
    variable the environment lacks is noted in unset as (field, name) and left as written."""
    if isinstance(obj, dict):
        return {k: _expand_vars(v, f"{where}.{k}" if where else str(k), unset) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand_vars(v, f"{where}.{i}", unset) for i, v in enumerate(obj)]
    if isinstance(obj, str):
        unset.extend((where, m.group(1) or m.group(2)) for m in _VAR.finditer(obj)
                     if (m.group(1) or m.group(2)) not in os.environ)
        return os.path.expandvars(obj)
    return obj


def _set_path(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    data[keys[-1]] = value
