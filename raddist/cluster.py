"""What raddist asks of the Ray cluster it runs on, once per run, from the driver.

- device: where embedding and training compute. The spec decides (resources.device); "auto" is the
  GPU when an alive node has one or the autoscaler can add one. That is asked, not read from a
  snapshot: an autoscaler reports no node types to a driver, so the question is put to it as a
  request for one GPU, and its answer watched (v2 says "infeasible"; v1 only launches, or not within
  GPU_PROBE_S). A yes starts the GPU node the run is about to use anyway.
- storage every node sees: on a cluster of several nodes (or with a head that runs no tasks), local
  paths are refused unless the spec declares a shared filesystem; then one tiny task per alive node
  writes and reads the output and the cache, and a node that cannot is named.
- credentials stay out of Ray's logs: Ray Tune copies the AWS_* variables of the driver into every
  trial's runtime environment, which Ray's runtime-env agent logs in full. Workers already inherit
  them from their raylet (or get them from the instance role), so Tune is told not to copy them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import List

from raddist import storage
from raddist.errors import ConfigError, StorageError

GPU_PROBE_S = 20.0
AWS_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def keep_credentials_out_of_runtime_envs() -> None:
    """Ray Tune copies these variables into each trial's runtime env (tune/execution/class_cache.py),
    and the runtime-env agent writes that env to logs/runtime_env_agent.log. Workers do not need the
    copy: they inherit the raylet's environment or use the node's role. tests/test_credentials.py
    greps a run's session directory for a planted secret."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - set(AWS_SECRETS)


def alive_nodes() -> List[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def autoscaler(wait_s: float = 10.0) -> str:
    """'v2', 'v1' or '' (no autoscaler: a fixed local or static cluster)."""
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2(fetch_from_server=True):
        return "v2"
    deadline = time.time() + wait_s
    while True:  # the v1 monitor reports once per update; a new cluster may not have yet
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        mapping = ((json.loads(raw) if raw else {}).get("autoscaler_report") or {}).get("node_type_mapping")
        if mapping or time.time() > deadline:
            break
        time.sleep(0.5)
    # a local `ray.init()` runs the v1 monitor too, read-only: its node types are named after the nodes
    configured = [t for node, t in (mapping or {}).items() if t != format_readonly_node_type(node)]
    return "v1" if configured else ""


def is_multi_node() -> bool:
    """Work may run on another node than the driver's: several nodes, a head without CPUs, or an
    autoscaler that can add nodes."""
    nodes = alive_nodes()
    if len(nodes) > 1 or autoscaler():
        return True
    return bool(nodes) and nodes[0]["Resources"].get("CPU", 0) == 0


def resolve_device(choice: str, say=print) -> str:
    """'gpu' or 'cpu' from the spec's resources.device."""
    if choice != "auto":
        return choice
    if any(n["Resources"].get("GPU", 0) > 0 for n in alive_nodes()):
        return "gpu"
    scaler = autoscaler()
    if not scaler:
        return "cpu"
    say("asking the autoscaler whether it can add a GPU node (resources.device: auto) ...")
    return "gpu" if _autoscaler_adds_gpu(scaler) else "cpu"


def _autoscaler_adds_gpu(scaler: str) -> bool:
    from ray.autoscaler.sdk import request_resources

    before = _v1_launches() if scaler == "v1" else {}
    request_resources(bundles=[{"GPU": 1}])
    deadline = time.time() + GPU_PROBE_S
    try:
        while time.time() < deadline:
            if any(n["Resources"].get("GPU", 0) > 0 for n in alive_nodes()):
                return True
            if scaler == "v2":
                answer = _v2_answer()
                if answer is not None:
                    return answer
            elif any(count > before.get(kind, 0) for kind, count in _v1_launches().items()):
                return True
            time.sleep(0.5)
        return False
    finally:
        request_resources(bundles=[])


def _v1_launches() -> dict:
    """Node type -> launches pending, from the v1 autoscaler's status."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    counts = dict(report.get("pending_launches") or {})
    for _ip, kind, _status in report.get("pending_nodes") or []:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _v2_answer():
    """True when v2 launches a node for the request, False when it calls it infeasible, else None."""
    import ray
    from ray._raylet import GcsClient
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(ray.get_runtime_context().gcs_address).get_cluster_status())
    state = reply.autoscaling_state
    for constraint in state.infeasible_cluster_resource_constraints:
        if any(r.request.resources_bundle.get("GPU", 0) for r in constraint.resource_requests):
            return False
    return True if (state.pending_instance_requests or state.pending_instances) else None


def require_shared_storage(spec, output: str, cache: str) -> None:
    """On a cluster where work runs on other nodes, every node must see the output and the cache."""
    if not is_multi_node() or spec.storage.shared_filesystem:
        return
    for field, uri in (("storage.output", output), ("storage.cache", cache)):
        if not storage.is_remote(uri):
            raise ConfigError(
                f"{field} is a local path ({uri}), but this cluster runs work on other nodes, which cannot "
                f"see it: use object storage (s3://bucket/prefix), or, if the path is on a filesystem "
                f"mounted on every node (NFS, EFS, Lustre), set storage.shared_filesystem: true")


def check_nodes_reach(uris: List[str]) -> None:
    """One tiny task per alive node writes and reads a probe under each uri: fail fast, naming the
    node and the URI it cannot reach (a missing IAM role, a mount missing on one node type)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex[:12]
    probes = {}
    for node in alive_nodes():
        task = ray.remote(_probe).options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False))
        probes[node["NodeManagerAddress"]] = task.remote(uris, f"{token}-{node['NodeID'][:8]}")
    for address, ref in probes.items():
        try:
            failed = ray.get(ref)
        except (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError):
            continue  # the node left before its probe ran (an autoscaler removing an idle node): nothing to check
        if failed:
            uri, cause = failed
            raise StorageError(uri, f"node {address} cannot write and read it: {cause}")


def _probe(uris: List[str], name: str):
    """(uri, cause) of the first uri this node cannot write, read back and delete a probe under; None if all work."""
    for uri in uris:
        probe = storage.join(uri, ".raddist-probe", name)
        try:
            storage.write_text(probe, name)
            if storage.read_text(probe) != name:
                return uri, "read back something else"
            storage.delete_file(probe)
        except Exception as e:  # noqa: BLE001 - whatever it is, it names this node and uri
            return uri, f"{type(e).__name__}: {e}"[:300]
    return None
