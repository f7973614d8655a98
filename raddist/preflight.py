"""Everything about a run that can be checked before Ray starts, each failure one line naming the field
or the URI: the environment variables the config names, the weights files, the manifests (present,
readable with the credentials at hand, well formed), and the output and cache (writable).

Then, with Ray up, the cluster's side (raddist.cluster): storage every node sees, and the salt: a run
into an output that another salt wrote is refused, as its pseudonyms would not line up.
"""

from __future__ import annotations

import uuid

from raddist import storage
from raddist.data import manifest as manifest_lib
from raddist.errors import ConfigError
from raddist.spec import SweepSpec, require_vars

RUN_RECORD = "run.json"  # in the output: what every run into it must agree on


def before_ray(spec: SweepSpec, output: str, cache: str) -> None:
    require_vars(spec)
    _weights(spec)
    for task in spec.tasks:
        table = manifest_lib.load(task.manifest)
        manifest_lib.validate(table, task.manifest, task.labels, task.type, len(task.classes) if task.classes else None)
        manifest_lib.check_roots(task.manifest, spec.data_roots)
    for field, uri in (("storage.output", output), ("storage.cache", cache)):
        writable(uri, field)
    if spec.tracking.mlflow:
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
    probe = storage.join(uri, ".raddist-probe", uuid.uuid4().hex[:12])
    try:
        storage.write_text(probe, "probe")
        storage.read_text(probe)
        storage.delete_file(probe)
    except PermissionError as e:
        raise ConfigError(f"{field}: {uri} is not writable ({e.strerror})") from None


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
    manifests = {**record.get("manifests", {}), **{t.name: t.manifest for t in spec.tasks}}
    storage.write_json(uri, {"salt_fingerprint": fingerprint, "manifests": manifests})
