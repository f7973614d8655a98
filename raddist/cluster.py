"""What raddist asks of the Ray cluster it runs on, once per run, from the driver.

- device: where embedding and training compute. The spec decides (resources.device); "auto" is the
  GPU when an alive node has one or the autoscaler can add one. That is asked, not read from a
  snapshot: an autoscaler reports no node types to a driver, so the question is put to it as a
  request for one GPU, and its answer watched for GPU_PROBE_S (v2 calls it infeasible; a node type
  launches for it; or the launch fails). The GPU device then waits for its first GPU node, at most
  resources.gpu_wait_s. A GPU node type the cloud refuses (quota, capacity) fails the run in one line
  naming the type and the cloud's reason: v1 reports it as the type's availability, v2 as a failed
  launch request (ray.autoscaler.v2.sdk's cluster status); v2 keeps a VM provider's error text out of
  the request, so it is read from the head's monitor log where this driver runs on the head.
- what the cluster can hold (capacity): all it has without an autoscaler; with one, what its node
  types allow where the autoscaler reported them to Ray, else unknown. Work is sized by it and by the
  config, never by what happens to be up when a run starts.
- storage every node sees: on a cluster of several nodes (or with a head that runs no tasks), local
  paths are refused unless the spec declares a shared filesystem; then one tiny task per alive node
  writes and reads the output and the cache, and a node that cannot is named.
- credentials stay out of Ray's logs: Ray Tune copies the AWS_* variables of the driver into every
  trial's runtime environment, which Ray's runtime-env agent logs in full. Workers already inherit
  them from their raylet (or get them from the instance role), so Tune is told not to copy them.
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from raddist import storage
from raddist.errors import ConfigError, RaddistError, StorageError

GPU_PROBE_S = 20.0
DEFAULT_GPU_WAIT_S = 900.0  # the spec's resources.gpu_wait_s default
TRAIN_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
LOG_TAIL = 1 << 20  # bytes of the monitor log searched for a launch error
AWS_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


class GpuUnavailable(RaddistError):
    """The run needs a GPU and none can come: one line that says why."""


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


def resolve_device(choice: str, say=print, wait_s: float = DEFAULT_GPU_WAIT_S) -> str:
    """'gpu' or 'cpu' from the spec's resources.device. 'gpu' (chosen, or 'auto' when the autoscaler
    can add a GPU node) returns once a node with a GPU is alive: a GPU node type that fails to launch
    fails the run in one line naming the type and the cloud's reason, and so does waiting longer than
    wait_s (resources.gpu_wait_s). Ray Train's wait for its workers is bounded by wait_s too."""
    if choice == "cpu":
        return "cpu"
    if choice == "auto" and not _gpu_alive():
        scaler = autoscaler()
        if not scaler:
            return "cpu"
        say("asking the autoscaler whether it can add a GPU node (resources.device: auto) ...")
        if not _autoscaler_adds_gpu(scaler):
            return "cpu"
    wait_for_gpu(wait_s, say)
    bound_train_worker_wait(wait_s)
    return "gpu"


def _gpu_alive() -> bool:
    return any(n["Resources"].get("GPU", 0) > 0 for n in alive_nodes())


def _autoscaler_adds_gpu(scaler: str) -> bool:
    """Put a request for one GPU to the autoscaler and watch its answer for up to GPU_PROBE_S: no
    (v2 calls it infeasible; v1 launches nothing), yes (a node type launches for it and has not
    failed by the end of the probe, or a GPU node is up), or a failed launch (raised)."""
    from ray.autoscaler.sdk import request_resources

    since = time.time()
    before = launches(scaler, since).launching
    request_resources(bundles=[{"GPU": 1}])
    launching = False
    try:
        while time.time() < since + GPU_PROBE_S:
            if _gpu_alive():
                return True
            state = launches(scaler, since)
            state.raise_failed()
            if state.gpu_infeasible:
                return False
            # a cloud answers a launch it refuses (quota, capacity) within seconds: watch to the end
            launching = launching or any(n > before.get(t, 0) for t, n in state.launching.items())
            time.sleep(0.5)
        return launching
    finally:
        request_resources(bundles=[])


def wait_for_gpu(wait_s: float, say=print) -> None:
    """Return once an alive node has a GPU, asking the autoscaler for one meanwhile; GpuUnavailable
    (one line) when none can come: no autoscaler, a GPU node type failed to launch, none has a GPU,
    or none came within wait_s."""
    from ray.autoscaler.sdk import request_resources

    if _gpu_alive():
        return
    scaler = autoscaler()
    if not scaler:
        raise GpuUnavailable("resources.device is gpu, but no node of this Ray cluster has a GPU and it has no "
                             "autoscaler to add one: use resources.device: auto or cpu")
    say(f"waiting for a GPU node (resources.gpu_wait_s: {wait_s:g}) ...")
    since = time.time()
    request_resources(bundles=[{"GPU": 1}])
    try:
        while time.time() < since + wait_s:
            if _gpu_alive():
                return
            state = launches(scaler, since)
            state.raise_failed()
            if state.gpu_infeasible:
                raise GpuUnavailable("resources.device is gpu, but no node type of this cluster has a GPU "
                                     "(the autoscaler calls a GPU infeasible)")
            time.sleep(1.0)
        state = launches(scaler, since)
        still = ", ".join(f"{n} × {t}" for t, n in sorted(state.launching.items())) or "nothing"
        raise GpuUnavailable(f"no GPU node came within resources.gpu_wait_s={wait_s:g}s (the autoscaler is "
                             f"launching: {still}); raise gpu_wait_s for slow clouds, or check the node types")
    finally:
        request_resources(bundles=[])


def bound_train_worker_wait(wait_s: float) -> None:
    """Ray Train's wait for its worker group to start (each fit's GPUs) is wait_s, not its 60 s default:
    Tune copies this variable from the driver into every trial, whose Train controller reads it."""
    os.environ.setdefault(TRAIN_START_TIMEOUT_ENV, str(float(wait_s)))


@dataclass
class Launches:
    """What the autoscaler does about nodes since a time: node types launching (type -> nodes), the
    ones whose launch failed (type -> the cloud's reason), and whether it calls a GPU infeasible."""

    launching: Dict[str, int] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    gpu_infeasible: bool = False

    def raise_failed(self) -> None:
        for kind, reason in sorted(self.failed.items()):
            raise GpuUnavailable(f"the autoscaler could not launch node type '{kind}' for a GPU: {reason}")


def launches(scaler: str, since: float) -> Launches:
    return _v2_launches(since) if scaler == "v2" else _v1_launches(since)


def _v1_launches(since: float) -> Launches:
    """From the v1 monitor's report: pending launches and nodes, and the node types its provider
    found unavailable (a NodeLaunchException: the cloud's category and description) since `since`."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    state = Launches(launching=dict(report.get("pending_launches") or {}))
    for _ip, kind, _status in report.get("pending_nodes") or []:
        state.launching[kind] = state.launching.get(kind, 0) + 1
    availability = (report.get("node_availability_summary") or {}).get("node_availabilities") or {}
    for kind, record in availability.items():
        info = record.get("unavailable_node_information") or {}
        if not record.get("is_available", True) and record.get("last_checked_timestamp", 0) >= int(since):
            state.failed[kind] = ": ".join(x for x in (info.get("category"), info.get("description")) if x)
    return state


def _v2_launches(since: float) -> Launches:
    """From v2's cluster status (ray.autoscaler.v2.sdk's reply and parser): pending launch requests
    and instances, failed launch requests since `since` of node types not known to lack a GPU, and
    infeasible GPU requests. v2 keeps a VM provider's error out of the request's reason; the head's
    monitor log has it (read when this driver runs on the head, as under `ray job submit`)."""
    import ray
    from ray._raylet import GcsClient
    from ray.autoscaler.v2.schema import Stats
    from ray.autoscaler.v2.utils import ClusterStatusParser
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(ray.get_runtime_context().gcs_address).get_cluster_status())
    status = ClusterStatusParser.from_get_cluster_status_reply(reply, stats=Stats())
    state = Launches()
    for item in list(status.pending_launches) + list(status.pending_nodes):
        state.launching[item.ray_node_type_name] = state.launching.get(item.ray_node_type_name, 0) + getattr(
            item, "count", 1)
    cpu_only = {n.ray_node_type_name for n in status.active_nodes + status.idle_nodes
                if not n.total_resources().get("GPU")}
    for launch in status.failed_launches:
        if (launch.failed_ts_s or 0) >= int(since) and launch.ray_node_type_name not in cpu_only:
            state.failed[launch.ray_node_type_name] = _v2_reason(launch.ray_node_type_name, launch.details or "")
    auto = reply.autoscaling_state
    requests = [r.request for c in auto.infeasible_cluster_resource_constraints for r in c.resource_requests]
    state.gpu_infeasible = any(r.resources_bundle.get("GPU", 0) for r in list(requests) + list(
        auto.infeasible_resource_requests))
    return state


def _v2_reason(kind: str, details: str) -> str:
    """The cloud's reason a launch of `kind` failed: from v2's request (KubeRay's provider keeps it),
    else the last such line of the head's monitor log, else where to look."""
    reason = re.sub(r"^.*request id \S+:\s*", "", details).strip()
    if reason:
        return reason
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    logs = glob.glob(os.path.join(node.get_logs_dir_path(), "monitor*.log")) if node else []
    pattern = re.compile(rf"Failed to launch \d+ nodes? of type {re.escape(kind)}: (.+)$")
    found = None
    for path in sorted(logs, key=os.path.getmtime):
        with open(path, errors="replace") as f:
            f.seek(max(0, os.path.getsize(path) - LOG_TAIL))
            for line in f:
                match = pattern.search(line.rstrip())
                found = match.group(1) if match else found
    if found:  # a NodeLaunchException, as v1 reports it: "category: description"
        return re.sub(r"^Node Launch Exception \((.*?)\): ", r"\1: ", found)
    return "the autoscaler gave no reason (the head's logs/monitor.log has the cloud's error)"


def capacity() -> Optional[Dict[str, float]]:
    """The most of each resource this cluster can hold, to size work by (never what happens to be up
    when a run starts): all it has, on a cluster without an autoscaler; with one, the maximum its
    node types allow where the autoscaler reported them (Ray's reading, as Ray Train and Data use
    it), else None: unknown, and the config alone decides."""
    import ray
    from ray._private.state import state

    if not autoscaler():
        return {k: float(v) for k, v in ray.cluster_resources().items()}
    most = state.get_max_resources_from_cluster_config()
    return {k: float(v) for k, v in most.items()} if most else None


def require_shared_storage(spec, output: str, cache: str) -> None:
    """On a cluster where work runs on other nodes, every node must see the output and the cache."""
    if not is_multi_node() or spec.storage.shared_filesystem:
        return
    for name, uri in (("storage.output", output), ("storage.cache", cache)):
        if not storage.is_remote(uri):
            raise ConfigError(
                f"{name} is a local path ({uri}), but this cluster runs work on other nodes, which cannot "
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
