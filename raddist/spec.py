"""The sweep spec: one YAML file says what to evaluate, parsed into typed models.

Every model forbids unknown keys and names the allowed ones, so a typo fails before any work.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from raddist.errors import ConfigError
from raddist.tasks import TASK_TYPES

TaskType = Literal[TASK_TYPES]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _name_allowed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(cls.model_fields)}")
        return data


class BackboneSpec(Strict):
    name: str
    # "hub" (pretrained, from the model hub), "random" (tests, demo) or a local/s3:// weights file
    weights: str = "hub"
    alias: Optional[str] = None  # how it is named in results; defaults to name

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from raddist.backbones.registry import get_config, is_named_by_source, list_backbones

        if is_named_by_source(v):  # timm:, hf:, open_clip:, python: resolve their contract here
            try:
                get_config(v)
            except ConfigError as e:
                raise ValueError(str(e)) from None
            return v
        if v not in list_backbones():
            raise ValueError(unknown_name("backbone", v, list_backbones()))
        return v

    @property
    def label(self) -> str:
        return self.alias or self.name


class PreprocessSpec(Strict):
    window: Union[Literal["auto"], Tuple[float, float]] = "auto"
    clip_percentiles: Optional[Tuple[float, float]] = None


class ExternalSpec(Strict):
    """A further test set of a task: another dataset's manifest, scored by the heads selected on the
    task's own validation split (raddist.external). label_map: the external manifest's label column ->
    this task's label, where the names differ; split: which of its splits to score ('all': every row)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    manifest: str
    label_map: Dict[str, str] = {}
    split: Literal["train", "val", "test", "all"] = "test"

    @field_validator("manifest")
    @classmethod
    def _absolute(cls, v: str) -> str:
        from raddist import storage

        return storage.normalize(v)


class TaskSpec(Strict):
    name: str
    manifest: str
    # a dataset of the catalog (`raddist datasets list`): type, labels, classes and preprocess default
    # to what the catalog records for it, so a config need not retype them
    dataset: Optional[str] = None
    type: TaskType
    labels: List[str] = []  # label columns; none for segmentation, whose labels are the masks (mask_uri)
    # multiclass: class names, index = label value; segmentation: mask value i, background first
    classes: Optional[List[str]] = None
    preprocess: PreprocessSpec = PreprocessSpec()
    # the square side every backbone sees this task's images at; default: the sweep's image_size, else
    # each backbone's own (segmentation wants finer token grids: 448 gives ViT/14s 32 x 32 tokens)
    image_size: Optional[int] = Field(None, ge=16)
    # volume tasks (manifest rows with volume_id): the one row per volume the frozen protocols see,
    # the mean (the reference's) or max of its slices' features; attention pooling: attention_mil
    pool: Literal["mean", "max"] = "mean"
    # manifest columns of coarse patient groups (e.g. sex, age_band, site, manufacturer): the headline
    # metric per group, the largest gap and its test (raddist.subgroups); a group with fewer test
    # patients than min_group_patients is pooled into "other" and never listed on its own
    subgroups: List[str] = []
    min_group_patients: int = Field(20, ge=1)
    external: List[ExternalSpec] = []  # other datasets scored by this task's heads (raddist.external)

    @model_validator(mode="before")
    @classmethod
    def _from_catalog(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("dataset"):
            return data
        from raddist.data import catalog

        try:
            info = catalog.get(data["dataset"])
        except catalog.CatalogError:
            raise ValueError(unknown_name("dataset", data["dataset"], [d["name"] for d in catalog.list_datasets()])) from None
        hints = {k: info.preprocessing[k] for k in ("window", "clip_percentiles") if k in info.preprocessing}
        defaults = {"type": info.task_type, "labels": list(info.labels), "preprocess": hints,
                    "classes": list(info.classes) if info.task_type in ("multiclass", "segmentation") else None}
        return {**defaults, **data}

    @field_validator("manifest")
    @classmethod
    def _absolute(cls, v: str) -> str:
        from raddist import storage

        return storage.normalize(v)  # relative to where the command runs, not to a worker's cwd

    @model_validator(mode="after")
    def _classes(self) -> "TaskSpec":
        if self.type == "segmentation":
            if self.labels:
                raise ValueError("a segmentation task has no label columns (its labels are the masks in "
                                 "mask_uri); name the mask values in 'classes', background first")
            if not self.classes or len(self.classes) < 2:
                raise ValueError("a segmentation task needs 'classes': the name of each mask value, "
                                 "background first, at least two")
            return self
        if not self.labels:
            raise ValueError(f"a {self.type} task needs 'labels': its label column(s)")
        if self.type == "multiclass":
            if len(self.labels) != 1:
                raise ValueError(f"a multiclass task has one label column of class indices; got {self.labels}")
            if not self.classes or len(self.classes) < 2:
                raise ValueError("a multiclass task needs 'classes': the class names, at least two")
        if self.type == "binary" and len(self.labels) != 1:
            raise ValueError(f"a binary task has one 0/1 label column; got {self.labels}")
        return self

    @model_validator(mode="after")
    def _external(self) -> "TaskSpec":
        from raddist.external import check_externals

        check_externals(self)
        return self

    @property
    def class_names(self) -> List[str]:
        return list(self.classes) if self.type in ("multiclass", "segmentation") else list(self.labels)


class ProtocolSpec(Strict):
    name: str
    params: Dict[str, Any] = {}
    # only these backbones (names or aliases); default all. E.g. LoRA only where qkv/fc1/fc2 exist
    backbones: Optional[List[str]] = None
    tasks: Optional[List[str]] = None  # only these tasks; default every task of a matching type
    # trainable protocols: a Ray Tune search over their params (raddist.protocols.trainable.space)
    search: Optional[Dict[str, Any]] = None

    @model_validator(mode="after")
    def _check(self) -> "ProtocolSpec":
        from raddist import protocols

        try:
            record = protocols.get(self.name)
        except KeyError:
            raise ValueError(unknown_name("protocol", self.name, protocols.names())) from None
        if self.search is not None and "search" not in record.params.model_fields:
            raise ValueError(f"protocol '{self.name}' search: only the trainable protocols search "
                             f"({', '.join(n for n in protocols.names() if protocols.get(n).trainable)})")
        try:
            self.parsed_params()
        except ValidationError as e:
            raise ValueError(f"protocol '{self.name}'{'' if self.search else ' params'}: {_format(e)}") from None
        return self

    def parsed_params(self):
        from raddist import protocols

        params = self.params if self.search is None else {**self.params, "search": self.search}
        return protocols.get(self.name).parse(params)


class FeatureSpec(Strict):
    n_last_blocks: int = Field(4, ge=1)
    patch_mean: bool = True


class StorageSpec(Strict):
    output: str = "raddist-output"
    # the embedding and pixel caches; independent of the output. Default: $RADDIST_CACHE, else beside
    # a remote output (<scheme>://<bucket>/raddist-cache, which every node sees), else ~/.cache/raddist
    cache: Optional[str] = None
    # local paths (output, cache) are on a filesystem that every node mounts at the same path (NFS,
    # EFS, Lustre); without it, a cluster of more than one node refuses them (raddist.preflight)
    shared_filesystem: bool = False

    def cache_uri(self, output: Optional[str] = None) -> str:
        from raddist import storage

        if self.cache or os.environ.get("RADDIST_CACHE"):
            return self.cache or os.environ["RADDIST_CACHE"]
        output = output or self.output
        if storage.is_remote(output):
            scheme, rest = output.split("://", 1)
            return f"{scheme}://{rest.split('/', 1)[0]}/raddist-cache"
        return os.path.expanduser("~/.cache/raddist")


class ResourcesSpec(Strict):
    # images per forward pass; default: sized to the GPU's free memory, or 64 on a CPU (embed.forward)
    embed_batch_size: Optional[int] = Field(None, ge=1)
    # embedding actors; default: one per GPU, or on a CPU-only cluster one per core for large jobs
    embed_actors: Optional[int] = Field(None, ge=1)
    # torch.compile the backbone for embedding: pays only when the model, not decoding, is the limit
    # and the job is long enough to repay the compile (benchmarks/embed_throughput.py --gpu measures it)
    compile: bool = False
    # JPEGs decoded by nvjpeg on the embedding GPU instead of by the CPUs (data.device_decode)
    gpu_jpeg_decode: bool = True
    max_concurrent_cells: int = Field(4, ge=1)
    # frozen-protocol cells of one embedding job run together in one Ray Tune trial, this many at most:
    # Tune's cost per trial stays small beside the cells' work at study scale
    cells_per_trial: int = Field(8, ge=1)
    cpus_per_cell: float = Field(0.5, gt=0)
    gpus_per_cell: float = Field(0.0, ge=0)
    # where embedding actors and training workers compute: auto is the GPU when the cluster has GPUs or
    # its autoscaler can add them (asked once per run: raddist.cluster), else the CPU. It decides the
    # pixels (nvjpeg) and the precision (bf16), so it is part of the cache key
    device: Literal["auto", "gpu", "cpu"] = "auto"
    # seconds a run waits for a GPU: the first GPU node (raddist.cluster.wait_for_gpu), the embedding
    # actors' GPUs, each start of a Ray Train fit's workers. Past it, or at once when the autoscaler
    # reports a GPU node type failed to launch (quota, capacity), the wait fails in one line. 15 minutes
    # covers a cold GPU node on a cloud (boot, image pull, weights); never wait forever
    gpu_wait_s: float = Field(900.0, gt=0)
    # trainable protocols (Ray Train): workers per fit
    train_workers: int = Field(1, ge=1)
    # decoded pixels cached per (manifest, contract), read by every later backbone (raddist.embed.jobs)
    pixel_cache: bool = True
    # seconds between embedding progress lines (and progress.json updates)
    progress_interval_s: float = Field(30.0, gt=0)
    # the large backbones (ViT-g, ViT-H): with large_gpu_resource set, their embedding actors and Ray
    # Train workers also ask for one unit of that custom resource, which only the large-GPU node types
    # advertise (cluster.yaml: gpu_a100x8's "large_gpu"), so they run there, while every other
    # backbone's one-GPU request is met by the small GPU nodes. None: no such request (a laptop, a
    # cluster of one GPU kind), as the request would then wait for a node that never comes
    large_backbones: List[str] = ["dinov2_vitg14", "openclip_vith14"]
    large_gpu_resource: Optional[str] = None

    def custom_resources(self, backbone: str) -> Dict[str, float]:
        """The custom resources a GPU actor or training worker of this backbone (registry name) asks for."""
        if self.large_gpu_resource and backbone in self.large_backbones:
            return {self.large_gpu_resource: 1.0}
        return {}


class WandbSpec(Strict):
    project: str
    group: Optional[str] = None  # default: the sweep's name


class TrackingSpec(Strict):
    # an MLflow tracking URI (a server, a database, or file:///path with MLFLOW_ALLOW_FILE_STORE=true):
    # each finished cell becomes one MLflow run of its params and metrics (raddist.tracking)
    mlflow: Optional[str] = None
    experiment: Optional[str] = None  # default: the sweep's name
    # Weights & Biases: each finished cell becomes one W&B run (raddist.tracking_wandb; pip install wandb)
    wandb: Optional[WandbSpec] = None


class RobustnessSpec(Strict):
    """Robustness (issue 26 item 4): the test split re-embedded under each corruption x severity
    (raddist.robustness), scored by the heads selected on the clean validation split."""

    corruptions: List[str] = Field(min_length=1)
    severities: List[int] = Field([1, 3, 5], min_length=1)
    seed: int = 0  # the corruptions' noise: per image, from (seed, its sample id)
    tasks: Optional[List[str]] = None  # default: every 2D classification task
    protocols: Optional[List[str]] = None  # default: every frozen protocol that scores further test sets

    @field_validator("corruptions", "severities", "protocols")
    @classmethod
    def _known(cls, v, info):
        from raddist.robustness import check_names

        check_names(**{info.field_name: v})
        return v


class SweepSpec(Strict):
    _unset_vars: List[Tuple[str, str]] = PrivateAttr(default_factory=list)  # (field, variable); see config.load

    name: str = "sweep"
    # reference: the grid reproduces the reference study's settings where raddist has them; raddist:
    # raddist's own defaults. The report says which, and lists the differences (raddist.reference)
    mode: Literal["raddist", "reference"] = "raddist"
    backbones: List[BackboneSpec] = Field(min_length=1)
    tasks: List[TaskSpec] = Field(min_length=1)
    protocols: List[ProtocolSpec] = Field(min_length=1)
    seeds: List[int] = Field([0], min_length=1)
    image_size: Optional[int] = Field(None, ge=16)  # default: each backbone's own input size
    features: FeatureSpec = FeatureSpec()
    storage: StorageSpec = StorageSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    bootstrap: int = Field(1000, ge=0)  # bootstrap resamples for the confidence intervals
    # directories outside a manifest's own that its relative uris may reach (through '..' or a symlink)
    data_roots: List[str] = []
    # an embedding job in which more rows than this fail to decode fails instead of caching: a
    # dataset that is mostly unreadable is a wrong path or a broken copy, not a result
    max_input_error_rate: float = Field(0.05, ge=0, le=1)
    robustness: Optional[RobustnessSpec] = None  # corrupted test splits (raddist.robustness)

    @property
    def unset_vars(self) -> List[Tuple[str, str]]:
        """(field, variable) of every ${VAR} the environment did not set when the spec was loaded."""
        return list(self._unset_vars)

    @model_validator(mode="after")
    def _protocol_backbones(self) -> "SweepSpec":
        labels = [b.label for b in self.backbones]
        for i, proto in enumerate(self.protocols):
            unknown = sorted(set(proto.backbones or []) - set(labels))
            if unknown:
                raise ValueError(f"protocols.{i}.backbones: unknown backbone(s) {unknown}; allowed: {labels}")
            tasks = [t.name for t in self.tasks]
            unknown = sorted(set(proto.tasks or []) - set(tasks))
            if unknown:
                raise ValueError(f"protocols.{i}.tasks: unknown task(s) {unknown}; allowed: {tasks}")
        unknown = sorted(set((self.robustness.tasks or []) if self.robustness else []) - {t.name for t in self.tasks})
        if unknown:
            raise ValueError(f"robustness.tasks: unknown task(s) {unknown}; allowed: {[t.name for t in self.tasks]}")
        return self

    @model_validator(mode="after")
    def _unique(self) -> "SweepSpec":
        """A repeated backbone, task, seed or protocol entry would run the same cells twice and count
        them as repeats (a fake "± 0.000 (n=2)"): refused, naming the field and the duplicate."""
        for field, names, hint in (
            ("backbones", [b.label for b in self.backbones], "; give each an 'alias'"),
            ("tasks", [t.name for t in self.tasks], "; give each a unique name"),
            ("seeds", list(self.seeds), ""),
            ("protocols", [json.dumps([p.name, p.parsed_params().model_dump(), p.backbones, p.tasks], sort_keys=True, default=str)
                           for p in self.protocols], ""),
        ):
            first: Dict[str, int] = {}
            for i, n in enumerate(names):
                if n in first:
                    what = f"'{self.protocols[i].name}' with the same params" if field == "protocols" else repr(n)
                    raise ValueError(f"{field}.{i}: duplicates {field}.{first[n]} ({what}){hint}")
                first[n] = i
        return self


def unknown_name(kind: str, name: str, allowed: List[str]) -> str:
    """"unknown backbone 'vit_bse'; did you mean 'vit_base'?": the closest names, not all of them
    (difflib); every name only when none is close."""
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=3, cutoff=0.6)
    if close:
        return f"unknown {kind} '{name}'; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return f"unknown {kind} '{name}'; allowed: {sorted(allowed)}"


def _format(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)  # top-level validators name their field themselves
    return "; ".join(parts)


def parse(data: dict, source: str = "spec") -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        return SweepSpec(**data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format(e)}") from None
