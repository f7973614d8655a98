"""A multi-node autoscaling Ray cluster on this machine: Ray's fake_multinode provider, real raylets,
under autoscaler v1 or v2.

Not ray.cluster_utils.AutoscalingCluster: it runs `ray stop --force` (every Ray on the machine) and
reads an example.yaml the wheel lacks (v2's monitor reads a provider's defaults from it, and dies
without it). Here the provider is Ray's FakeMultiNodeProvider loaded as an "external" one, whose
defaults are Ray's built-in minimal config, so nothing is written into the installed wheel; the
config below follows that example.yaml. Its cloud can refuse to launch a node type, as a cloud does
(quota, capacity), or accept a launch and never bring the node (set_faults). v2 runs as
AutoscalingCluster(autoscaler_v2=True) runs it: RAY_enable_autoscaler_v2 and the head's instance id
on the head, launch_multiple and head_node_id on the provider. The head is started with `ray start
--head --block` on a port and temp dir of its own, and shut down by killing exactly the processes of
this cluster (its process group, and whatever runs from its temp dir).

The nodes inherit the environment given to start(): a "gpu" node is a CPU process that declares a
GPU, so RADDIST_FAKE_GPUS=1 lets raddist's GPU actors compute on its CPU.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

import psutil

OBJECT_STORE = 100 * 1024 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeCluster:
    """node_types: name -> resources of one node, each autoscaling from 0 to max_workers, under
    autoscaler v2 or v1. The cloud's faults per node type can be set at any time (set_faults)."""

    def __init__(self, temp_dir: str, node_types: Dict[str, dict], max_workers: int = 2,
                 idle_timeout_minutes: float = 0.1, autoscaler_v2: bool = False):
        import ray._private.services as services
        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

        self.ip = services.get_node_ip_address()
        self.port = _free_port()
        self.address = f"{self.ip}:{self.port}"
        self.temp_dir = temp_dir
        self.autoscaler_v2 = autoscaler_v2
        types = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
        for name, resources in node_types.items():
            types[name] = {"resources": {**resources, "object_store_memory": OBJECT_STORE}, "node_config": {},
                           "min_workers": 0, "max_workers": max_workers}
        provider = {"type": "external", "module": f"{__name__}.FaultyFakeProvider",
                    "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True,
                    "gcs_address": self.address, "faults": os.path.join(temp_dir, "faults.json")}
        if autoscaler_v2:
            provider.update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
        self.config = {
            "cluster_name": "fake_multinode", "max_workers": max_workers * len(node_types),
            "provider": provider, "available_node_types": types, "head_node_type": "ray.head.default", "auth": {},
            "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes, "docker": {},
            **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                               "cluster_synced_files", "rsync_exclude", "rsync_filter")},
            "file_mounts": {}, "file_mounts_sync_continuously": False,
        }
        self.proc: Optional[subprocess.Popen] = None

    def set_faults(self, faults: Dict[str, dict]) -> None:
        """node type -> {"refuse": [category, description]}: the cloud refuses each launch of that type
        (a quota, no capacity); or {"hang": True}: it accepts the launch, and the node never comes."""
        with open(self.config["provider"]["faults"] + ".tmp", "w") as f:
            json.dump(faults, f)
        os.replace(self.config["provider"]["faults"] + ".tmp", self.config["provider"]["faults"])

    def env(self, extra: Optional[dict] = None) -> dict:
        """The environment of a driver of this cluster."""
        return {**os.environ, "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "disabled", **(extra or {})}

    def start(self, env: dict) -> None:
        os.makedirs(self.temp_dir, exist_ok=True)
        self.set_faults({})
        config = os.path.join(self.temp_dir, "autoscaler.json")
        with open(config, "w") as f:
            json.dump(self.config, f)
        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

        env = {**os.environ, **env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               # a raylet waits this long for its agents' ports (default 10 s), which a loaded machine's
               # Python start-up can exceed, and then dies
               "RAY_agent_register_timeout_ms": "120000",
               # the monitor imports the provider from this module
               "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
        if self.autoscaler_v2:
            env.update(RAY_enable_autoscaler_v2="1", RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID)
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        self.proc = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={self.port}", f"--autoscaling-config={config}",
             f"--temp-dir={self.temp_dir}", "--num-cpus=0", f"--object-store-memory={OBJECT_STORE}",
             "--include-dashboard=false", "--dashboard-agent-listen-port=0",
             f"--ray-client-server-port={_free_port()}", "--disable-usage-stats"],
            env=env, stdout=open(os.path.join(self.temp_dir, "ray_start.log"), "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(open(os.path.join(self.temp_dir, "ray_start.log")).read()[-3000:])
            try:
                with socket.create_connection((self.ip, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("the fake cluster's head did not come up")

    def query(self, code: str, timeout: float = 120) -> object:
        """Run `code` (which sets `result`) in a driver connected to the cluster; its result, as JSON."""
        script = ("import json, ray\nray.init(address=%r, logging_level='ERROR')\nresult = None\n%s\n"
                  "print('RESULT ' + json.dumps(result))\n" % (self.address, code))
        proc = subprocess.run([sys.executable, "-c", script], env=self.env(), capture_output=True, text=True,
                              timeout=timeout)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
        return json.loads(line[len("RESULT "):])

    def node_ids(self, resource: str) -> List[str]:
        """Alive worker nodes that declare a resource (e.g. GPU)."""
        return self.query(f"result = [n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get({resource!r})]")

    def workers(self) -> List[dict]:
        """The alive worker nodes: their resources."""
        return self.query("result = [n['Resources'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('CPU', 0) > 0]")

    def pids(self) -> set:
        return cluster_pids(self.temp_dir, self.proc.pid if self.proc else None)

    def raylet_pids(self) -> Dict[str, int]:
        """Worker node raylets of this cluster (not the head's): node id -> pid."""
        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

        found = {}
        for pid in self.pids():
            try:
                cmd = psutil.Process(pid).cmdline()
            except psutil.NoSuchProcess:
                continue
            if cmd and cmd[0].endswith("raylet"):
                node = next((a.split("=", 1)[1] for a in cmd if a.startswith("--node_id=")), None)
                if node and node != FAKE_HEAD_NODE_ID:
                    found[node] = pid
        return found

    def shutdown(self) -> None:
        stop_cluster(self.temp_dir, self.proc.pid if self.proc else None)


def cluster_pids(temp_dir: str, root: Optional[int] = None) -> set:
    """The processes of the Ray cluster whose temp dir is temp_dir (and of root's process tree)."""
    pids = set()
    if root is not None:
        try:
            p = psutil.Process(root)
            pids |= {p.pid} | {c.pid for c in p.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in a for a in (p.info["cmdline"] or [])):
                pids |= {p.pid} | {c.pid for c in p.children(recursive=True)}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return pids - {os.getpid()}


def stop_cluster(temp_dir: str, root: Optional[int] = None) -> None:
    """SIGTERM, then SIGKILL, every process of that cluster and no other (never `ray stop`)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        pids = cluster_pids(temp_dir, root)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and any(psutil.pid_exists(p) for p in pids):
            time.sleep(0.3)


def _provider_base():
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

    return FakeMultiNodeProvider


class FaultyFakeProvider(_provider_base()):
    """Ray's fake provider, with a cloud whose faults per node type are read at each launch from the
    JSON file provider_config["faults"] (FakeCluster.set_faults): a refusal is a NodeLaunchException,
    as the AWS provider reports InsufficientInstanceCapacity or a vCPU quota; a hang launches nothing."""

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        from ray.autoscaler.node_launch_exception import NodeLaunchException
        from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

        with open(self.provider_config["faults"]) as f:
            fault = json.load(f).get(tags.get(TAG_RAY_USER_NODE_TYPE), {})
        if fault.get("refuse"):
            category, description = fault["refuse"]
            raise NodeLaunchException(category, description, None)
        if fault.get("hang"):
            return None
        return super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
