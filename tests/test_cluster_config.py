"""The cluster configs (cluster.yaml, jobs/kuberay/) pass Ray's own autoscaler validation, as `ray
up` runs it, and give every node the same pinned Ray, CUDA and torch, the tested versions of every
other package (constraints.txt), a pinned AMI, disks, credentials by role, Ray's token
authentication; the RayJob resumes on a new cluster and its head is kept from voluntary disruption."""

import copy
import importlib.metadata
import re
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "cluster.yaml"
KUBERAY = ROOT / "jobs" / "kuberay"
RAYJOB = KUBERAY / "rayjob.yaml"
DOCKERFILE = KUBERAY / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"
README = ROOT / "README.md"

# rayproject/ray:<ray version>-py<python>-<cpu | cuXYZ>
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-(?P<py>py3\d+)-(?P<platform>cpu|cu\d+)$")
PIN = re.compile(r"""["']?([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s"'\\]+)""")
SECRET = re.compile(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|aws_session_token", re.I)


def _config():
    return yaml.safe_load(CONFIG.read_text())


def _validate(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def _image(config, node_type):
    """The Docker image `ray up` starts on a node of this type."""
    if node_type == config["head_node_type"]:
        return config["docker"].get("head_image", config["docker"].get("image"))
    specific = config["available_node_types"][node_type].get("docker", {})
    return specific.get("worker_image", config["docker"].get("worker_image", config["docker"].get("image")))


def _gpu_types(config):
    return {k: t for k, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}


def _commands(config):
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    commands = [c for k in keys for c in config.get(k, [])]
    for t in config["available_node_types"].values():
        commands += t.get("initialization_commands", []) + t.get("worker_setup_commands", [])
    return commands


def _pins(text):
    return {name.lower().replace("_", "-"): version for name, version in PIN.findall(text)}


def _rayjob():
    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    (job,) = [d for d in docs if d.get("kind") == "RayJob"]
    return job, docs


def _pods(cluster):
    return [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]


def test_cluster_yaml_is_valid_and_declares_gpus():
    config = _config()
    _validate(config)
    types = config["available_node_types"]
    gpu_types = _gpu_types(config)
    assert len(gpu_types) >= 2 and all(t["max_workers"] > t["min_workers"] == 0 for t in gpu_types.values())
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0  # the head only drives
    assert any(t["resources"].get("CPU", 0) > 0 and "GPU" not in t["resources"] for t in types.values())
    assert config["idle_timeout_minutes"] > 0
    assert any("pip install" in c and "raddist" in c for c in config["setup_commands"])
    assert ".venv" in config["rsync_exclude"]


def test_every_node_runs_the_installed_ray_in_a_pinned_image():
    config = _config()
    for node_type, spec in config["available_node_types"].items():
        image = RAY_IMAGE.match(_image(config, node_type) or "")
        assert image, f"{node_type}: {_image(config, node_type)!r} is not a pinned rayproject/ray tag"
        assert image["ray"] == ray.__version__, f"{node_type} runs Ray {image['ray']}, tests run {ray.__version__}"
        wants_gpu = spec["resources"].get("GPU", 0) > 0
        assert (image["platform"] != "cpu") == wants_gpu, f"{node_type}: {image['platform']} image"
        if wants_gpu:
            assert "--gpus all" in spec["docker"]["worker_run_options"]
    assert _pins(" ".join(config["setup_commands"]))["ray"] == ray.__version__


def test_torch_is_pinned_to_the_gpu_image_cuda():
    config = _config()
    setup = " ".join(config["setup_commands"])
    pins = _pins(setup)
    (cuda,) = {RAY_IMAGE.match(_image(config, t))["platform"] for t in _gpu_types(config)}
    assert pins["torch"].endswith("+" + cuda) and pins["torchvision"].endswith("+" + cuda)
    assert f"download.pytorch.org/whl/{cuda}" in setup
    # the pins are versions raddist itself accepts
    from packaging.requirements import Requirement

    for req in map(Requirement, importlib.metadata.requires("raddist") or []):
        if req.marker is None and req.name.lower() in pins:
            version = pins[req.name.lower()].split("+")[0]
            assert req.specifier.contains(version, prereleases=True), f"{req} does not admit {version}"


def test_every_node_type_has_a_sized_disk_and_an_instance_profile():
    config = _config()
    for node_type, spec in config["available_node_types"].items():
        node = spec["node_config"]
        (root,) = [m for m in node["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sda1"]
        assert root["Ebs"]["VolumeType"] == "gp3" and root["Ebs"]["VolumeSize"] >= 100, node_type
        profile = node.get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"{node_type} has no IAM instance profile"
        assert node["ImageId"].startswith(("ami-", "resolve:ssm:")), node_type
    gpu_disks = [t["node_config"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] for t in _gpu_types(config).values()]
    assert min(gpu_disks) >= 200


def test_nodes_install_raddist_non_editable_and_hold_no_credentials():
    config = _config()
    for command in _commands(config):
        assert not re.search(r"pip install[^;&|]*\s(-e|--editable)\b", command), command
    assert "/home/ray/raddist" in config["file_mounts"]
    assert any(c.rstrip().endswith("/home/ray/raddist") for c in config["setup_commands"])
    for path in (CONFIG, RAYJOB, DOCKERFILE):
        assert not SECRET.search(path.read_text()), f"{path.name} holds an AWS credential"
    # the dashboard and job API stay behind the SSH tunnel: no ports opened beyond Ray's defaults
    for spec in config["available_node_types"].values():
        assert "SecurityGroupIds" not in spec["node_config"]


def test_kuberay_rayjob_matches_the_cluster_yaml():
    job, docs = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    entrypoint = spec["entrypoint"].split()
    assert entrypoint[:2] == ["python", "jobs/sweep.py"]
    assert (ROOT / "raddist" / "configs" / f"{entrypoint[2]}.yaml").exists()
    assert entrypoint[entrypoint.index("--output") + 1].startswith("s3://")
    assert (ROOT / entrypoint[1]).exists()

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    cpu_groups = [g for g in cluster["workerGroupSpecs"] if g not in gpu_groups]
    assert gpu_groups and cpu_groups
    for group in gpu_groups:
        assert group["minReplicas"] == 0 and group["maxReplicas"] > 0
        assert int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1

    # one image everywhere, tagged <raddist version>-ray<base image tag>, built on cluster.yaml's GPU image
    config = _config()
    (gpu_image,) = {_image(config, t) for t in _gpu_types(config)}
    base_tag = gpu_image.split(":", 1)[1]
    version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    images = {c["image"] for g in _pods(cluster) for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1 and images.pop().endswith(f":{version}-ray{base_tag}")

    # credentials come from the service account (IRSA), never from the manifest
    accounts = {d["metadata"]["name"] for d in docs if d.get("kind") == "ServiceAccount"}
    for group in _pods(cluster):
        pod = group["template"]["spec"]
        assert pod.get("serviceAccountName") in accounts
        for container in pod["containers"]:
            names = {e.get("name", "") for e in container.get("env", [])}
            assert not {n for n in names if n.startswith("AWS_")}, names
            assert "envFrom" not in container


def test_kuberay_dockerfile_builds_on_the_cluster_image_with_the_same_pins():
    config = _config()
    text = DOCKERFILE.read_text()
    (gpu_image,) = {_image(config, t) for t in _gpu_types(config)}
    assert re.search(rf"^ARG RAY_IMAGE={re.escape(gpu_image)}$", text, re.M)
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.M)
    assert _pins(text) == _pins(" ".join(config["setup_commands"]))
    assert re.search(r"pip install[^\n]*\n?(?:[^\n]*\\\n)*\s*/raddist\b", text)
    assert not re.search(r"\s(-e|--editable)\s", text)


def test_validation_rejects_a_broken_config():
    config = _config()
    config["available_node_types"]["gpu_a10g"]["max_workers"] = "many"
    with pytest.raises(Exception):
        _validate(config)


def _constraints():
    lines = [line.split("#")[0].strip() for line in CONSTRAINTS.read_text().splitlines()]
    return _pins(" ".join(line for line in lines if line))


def _installed(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_constraints_are_the_tested_versions_and_every_node_installs_with_them():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned = {canonicalize_name(k): v for k, v in _constraints().items()}
    assert len(pinned) > 50 and "raddist" not in pinned
    installed = {name: _installed(name) for name in pinned}
    # the pins cover raddist's extras too (mlflow, search, wandb): what this venv lacks is not checked
    stale = {name: (version, installed[name]) for name, version in pinned.items()
             if installed[name] is not None and installed[name] != version}
    assert sum(v is not None for v in installed.values()) > 50
    assert not stale, f"constraints.txt is not this venv's (pinned, installed): {stale}; sh jobs/freeze_constraints.sh"
    for req in map(Requirement, importlib.metadata.requires("raddist") or []):
        if req.marker is None or req.marker.evaluate():
            assert canonicalize_name(req.name) in pinned, f"{req.name} is a dependency but not in constraints.txt"
            assert req.specifier.contains(pinned[canonicalize_name(req.name)], prereleases=True), req
    # every node installs raddist under them, and the pins spelled out agree with them (CUDA tag aside)
    config = _config()
    assert any("-c /home/ray/raddist/constraints.txt" in c and c.rstrip().endswith("/home/ray/raddist")
               for c in config["setup_commands"])
    dockerfile = DOCKERFILE.read_text()
    assert "-c /raddist/constraints.txt" in dockerfile and re.search(r"^COPY .*constraints\.txt /raddist/", dockerfile, re.M)
    for name, version in _pins(" ".join(config["setup_commands"])).items():
        assert pinned[canonicalize_name(name)] == version.split("+")[0], name
    assert "constraints.txt" in README.read_text()


def test_every_node_boots_one_pinned_ami():
    config = _config()
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert len(images) == 1 and re.fullmatch(r"ami-[0-9a-f]{17}", images.pop())
    assert "aws ssm get-parameter" in CONFIG.read_text()  # how to refresh it


def test_large_backbones_ask_for_a_resource_only_large_gpu_nodes_have():
    from raddist.backbones.registry import list_backbones
    from raddist.spec import ResourcesSpec

    config = _config()
    standard = {"CPU", "GPU", "memory", "object_store_memory"}
    custom = {name: {t for t, spec in config["available_node_types"].items() if name in spec["resources"]}
              for spec in config["available_node_types"].values() for name in spec["resources"] if name not in standard}
    (name, holders), = custom.items()
    for t in holders:  # the 8-GPU type, one unit per GPU; no one-GPU type has it
        resources = config["available_node_types"][t]["resources"]
        assert resources["GPU"] >= 8 and resources[name] == resources["GPU"]
    assert {t for t, spec in _gpu_types(config).items() if spec["resources"]["GPU"] == 1} and not holders & {
        t for t, spec in _gpu_types(config).items() if spec["resources"]["GPU"] == 1}

    on_this_cluster = ResourcesSpec(large_gpu_resource=name)
    assert set(on_this_cluster.large_backbones) == {"dinov2_vitg14", "openclip_vith14"} <= set(list_backbones())
    for backbone in list_backbones():
        wants = on_this_cluster.custom_resources(backbone)
        assert wants == ({name: 1.0} if backbone in on_this_cluster.large_backbones else {}), backbone
        assert ResourcesSpec().custom_resources(backbone) == {}  # a laptop: never a request nothing can meet


def test_ray_token_authentication_is_on():
    config = _config()
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert re.search(r"export RAY_AUTH_MODE=token;.*ray start", command), command
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    job, _ = _rayjob()
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    readme = README.read_text()
    for step in ("ray get-auth-token --generate", "RAY_AUTH_MODE=token", "ray job submit", "--no-wait", "ray job logs"):
        assert step in readme, step


def test_the_rayjob_resumes_on_a_new_cluster_and_its_head_is_not_evicted():
    job, docs = _rayjob()
    spec = job["spec"]
    env_vars = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env_vars["RADDIST_SALT_FILE"].startswith("s3://")  # every new head reads the same salt
    assert spec["backoffLimit"] >= 1  # a failed job is retried on a new cluster, and resumes
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]
    assert head["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    (pdb,) = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 0
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= head["labels"].items()
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:  # workers stay free to scale down
        assert not selector.items() <= group["template"].get("metadata", {}).get("labels", {}).items()
    assert "RADDIST_SALT_FILE" in README.read_text()
