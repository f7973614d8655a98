"""Everything about a run that can be checked before Ray starts, each failure one line naming the field
or the URI: the environment variables the config names, the weights files, the manifests (present,
readable with the credentials at hand, well formed), and the output and cache (writable).

Then, with Ray up, the cluster's side (raddist.cluster): storage every node sees, and the salt: a run
into an output that another salt wrote is refused, as its pseudonyms would not line up.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from urllib.parse import urlparse

from raddist import external, storage
from raddist.data import manifest as manifest_lib
from raddist.errors import ConfigError, StorageError
from raddist.config import require_vars
from raddist.spec import SweepSpec

RUN_RECORD = "run.json"  # in the output: what every run into it must agree on


def before_ray(spec: SweepSpec, output: str, cache: str) -> None:
    require_vars(spec)
    backbones(spec)
    _weights(spec)
    _hub_weights(spec)
    for task in spec.tasks:
        table = manifest_lib.load(task.manifest)
        manifest_lib.validate(table, task.manifest, task.labels, task.type, len(task.classes) if task.classes else None)
        manifest_lib.check_roots(task.manifest, spec.data_roots)
        external.check_before_ray(task, spec.data_roots)  # its external test sets' manifests too
    for field, uri in (("storage.output", output), ("storage.cache", cache)):
        writable(uri, field)
    if spec.tracking.mlflow:
        _reachable(spec.tracking.mlflow, "tracking.mlflow")
        with _mlflow_fails_fast():
            _tracking(spec.tracking.mlflow, spec.tracking.experiment or spec.name)


def _weights(spec: SweepSpec) -> None:
    from raddist.backbones.weights import check_loadable
    from raddist.keys import weights_identity

    for i, b in enumerate(spec.backbones):
        try:
            if b.weights not in ("random", "hub"):  # a file: it exists (its identity is its size and mtime)
                weights_identity(b.weights)
        except FileNotFoundError:
            raise ConfigError(f"backbones.{i}.weights: {b.weights} does not exist (or cannot be read with the "
                              "credentials at hand)") from None
        try:
            check_loadable(b.weights)
        except Exception as e:  # noqa: BLE001 - whatever refuses it, it is this field's file
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ConfigError(f"backbones.{i}.weights: {b.weights} cannot be loaded as weights: "
                              f"{type(e).__name__}: {reason}") from None


def _tracking(uri: str, experiment: str) -> None:
    """The MLflow store is reachable and takes the experiment (created if absent), before any cell."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("tracking.mlflow: MLflow is not installed; pip install 'raddist[mlflow]'") from None
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment)
    except Exception as e:  # noqa: BLE001 - whatever the store says, it is this field's URI
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(f"tracking.mlflow: {uri} cannot be used: {reason}") from None


def writable(uri: str, field: str) -> None:
    """Write, read back and delete a probe under uri; the store's own error says why not."""
    if not storage.is_remote(uri) and storage.is_file(uri):
        raise ConfigError(f"{field}: {uri} is a file; it must be a directory")
    probe = storage.join(uri, ".raddist-probe", uuid.uuid4().hex[:12])
    try:
        storage.write_text(probe, "probe")
        storage.read_text(probe)
        storage.delete_file(probe)
    except OSError as e:  # permissions, a parent that is a file, a full or read-only disk
        raise ConfigError(f"{field}: {uri} is not writable ({e.strerror or e})") from None
    except StorageError as e:  # the same, as storage.write_bytes words it
        raise ConfigError(f"{field}: {uri} is not writable ({e.cause})") from None


def same_salt(spec: SweepSpec, output: str, fingerprint: str) -> None:
    """Record the salt's fingerprint (and where each task's manifest is, for `raddist errors --reveal`)
    in the output; refuse an output that another salt wrote."""
    uri = storage.join(output, RUN_RECORD)
    record = storage.read_json(uri) if storage.exists(uri) else {}
    recorded = record.get("salt_fingerprint")
    if recorded and recorded != fingerprint:
        raise ConfigError(
            f"{output} was written with another salt (fingerprint {recorded}, this run's {fingerprint}): "
            "its pseudonyms would not line up with this run's. Use the deployment's salt "
            "(RADDIST_SALT_FILE or RADDIST_SALT, see the README), or another output")
    manifests = {**record.get("manifests", {}), **{t.name: t.manifest for t in spec.tasks},
                 **{k: v for t in spec.tasks for k, v in external.manifest_uris(t).items()}}
    storage.write_json(uri, {"salt_fingerprint": fingerprint, "manifests": manifests})


HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONNECT_TIMEOUT_S = 5.0  # a store or hub that does not answer in this long is down, not slow


def _hub_weights(spec: SweepSpec) -> None:
    """weights: hub needs the weights in the local hub cache, or a hub that answers (in seconds):
    never a run that starts Ray and fails in every embedding actor."""
    import huggingface_hub as hf

    for i, b in enumerate(spec.backbones):
        if b.weights != "hub":
            continue
        repo = _hub_repo(b.name)
        if repo is None or any(isinstance(hf.try_to_load_from_cache(repo, f), str) for f in HUB_FILES):
            continue
        where = f"backbones.{i}.weights: hub weights of {b.name} ({repo}) are not in the local cache ({hf.constants.HF_HUB_CACHE})"
        _gated_token(i, b.name, repo)
        if hf.constants.HF_HUB_OFFLINE:
            raise ConfigError(f"{where} and HF_HUB_OFFLINE is set; download them first, or give a weights file")
        try:
            hf.get_hf_file_metadata(hf.hf_hub_url(repo, "config.json"), timeout=CONNECT_TIMEOUT_S)
        except hf.errors.EntryNotFoundError:
            pass  # the hub answers; the weights file is found at load time
        except Exception as e:  # noqa: BLE001 - unreachable, refused, unknown repository: one line
            raise ConfigError(f"{where} and the hub cannot be reached ({_first_line(e)}); download them where "
                              "there is a network, or give a weights file") from None


def _gated_token(i: int, name: str, repo: str) -> None:
    """A gated model (its licence accepted on the hub) downloads only with a token: none is one line here,
    not a 401 in every embedding actor."""
    import huggingface_hub as hf

    from raddist.backbones.registry import get_config

    if get_config(name).gated and not hf.get_token():
        raise ConfigError(f"backbones.{i}.weights: {name} ({repo}) is gated ({get_config(name).license}) and no "
                          f"token is set: accept its licence at https://huggingface.co/{repo} and set HF_TOKEN")


def _hub_repo(name: str):
    """The hub repository a registered backbone's hub weights come from (None: not from the HF hub)."""
    from raddist.backbones.registry import get_config

    config = get_config(name)
    if config.source == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(config.model_id)
        return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None
    from raddist.provenance import hub_repo

    return hub_repo(name)  # None for a python: factory or a local model directory


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _reachable(uri: str, field: str) -> None:
    """An http(s) store answers a TCP connect within CONNECT_TIMEOUT_S: said before, refused in one line,
    instead of minutes of the client's retries."""
    url = urlparse(uri)
    if url.scheme not in ("http", "https") or not url.hostname:
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    print(f"checking {field} {url.scheme}://{url.hostname}:{port} …", flush=True)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(f"{field}: {uri} cannot be reached ({e.strerror or type(e).__name__}"
                          f"{'' if e.strerror else f' after {CONNECT_TIMEOUT_S:.0f} s'})") from None


@contextlib.contextmanager
def _mlflow_fails_fast():
    """MLflow's HTTP client retries for minutes by default; a preflight check asks once, briefly."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(CONNECT_TIMEOUT_S * 2)))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def backbones(spec: SweepSpec) -> None:
    """Every backbone's libraries import, and every image size it is planned at is a multiple of its
    patch size: one line naming the backbone and the package, or the task and the sizes that fit."""
    import importlib

    from raddist.backbones.registry import get_config, libraries, size_error
    from raddist.plan import contract_for

    for i, b in enumerate(spec.backbones):
        config = get_config(b.name)
        for module, package in libraries(config, b.weights):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(f"backbones.{i}: {b.name} needs the package {package} ({module} does not import: "
                                  f"{str(e).strip()[:200]}); pip install {package}") from None
        if spec.features.n_last_blocks > config.num_blocks:
            raise ConfigError(f"features.n_last_blocks: {spec.features.n_last_blocks} blocks asked for, but {b.name} "
                              f"has {config.num_blocks}; use at most {config.num_blocks}")
        for task in spec.tasks:
            error = size_error(config, contract_for(spec, b, task)["size"])
            if error:
                raise ConfigError(f"tasks.{task.name}: {error}")
