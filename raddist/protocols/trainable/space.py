"""A trainable protocol's hyperparameter search: the spec's `search:` block, as Ray Tune takes it.

    - name: lora
      search:
        space: {lr: {loguniform: [1e-5, 1e-3]}, weight_decay: {choice: [0, 0.05]}, r: {choice: [8, 16]}}
        algorithm: optuna      # grid | random | optuna | hyperopt
        scheduler: asha        # none | asha
        num_samples: 16        # trials (grid: repeats of the whole grid)
        max_concurrent: 4      # default: as many as the cluster can hold (search.concurrent_fits)
        seed: 0                # default: the cell's seed

Every parameter is a field of the protocol's Params (lr: one learning rate, in place of the lrs grid).
The block is checked when the spec is read (TrainParams validates it against its own fields): an
unknown parameter, a bad range, a grid under a model-based searcher, or a searcher whose package is
not installed is one line, before Ray starts. Ray is imported only to run the search.

tune_space / algorithm build Tune's objects; configurations() draws the configurations a seeded
searcher proposes without running anything (the same seed gives the same sequence).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from raddist.errors import ConfigError

ALGORITHMS = ("grid", "random", "optuna", "hyperopt")
PACKAGES = {"optuna": "optuna", "hyperopt": "hyperopt"}
INSTALL = {"optuna": "pip install 'raddist[search]'", "hyperopt": "pip install hyperopt"}
# TrainParams fields that say how the search or the hardware runs, not what trains
NOT_SEARCHABLE = {"lrs", "search", "scheduler", "asha_grace_epochs", "max_failures", "micro_batch", "fsdp"}


class Dimension(BaseModel):
    """One parameter's values: exactly one of loguniform/uniform [low, high], choice or grid [values]."""

    model_config = ConfigDict(extra="forbid")

    loguniform: Optional[List[float]] = None
    uniform: Optional[List[float]] = None
    choice: Optional[List[Any]] = None
    grid: Optional[List[Any]] = None

    @model_validator(mode="after")
    def _one(self) -> "Dimension":
        given = [k for k in ("loguniform", "uniform", "choice", "grid") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of loguniform, uniform, choice, grid (got {given or 'none'})")
        values = getattr(self, given[0])
        if given[0] in ("loguniform", "uniform"):
            if len(values) != 2 or not values[0] < values[1]:
                raise ValueError(f"{given[0]} takes [low, high] with low < high, not {values}")
            if given[0] == "loguniform" and values[0] <= 0:
                raise ValueError(f"loguniform needs low > 0, not {values[0]}")
        elif not values:
            raise ValueError(f"{given[0]} needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("loguniform", "uniform", "choice", "grid") if getattr(self, k) is not None)

    @property
    def values(self) -> List[Any]:
        return getattr(self, self.kind)


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    space: Dict[str, Dimension] = Field(min_length=1)
    algorithm: Literal["grid", "random", "optuna", "hyperopt"] = "random"
    scheduler: Literal["none", "asha"] = "none"
    num_samples: Optional[PositiveInt] = None  # default: 1 for grid (the grid once), else 8
    max_concurrent: Optional[PositiveInt] = None
    seed: Optional[NonNegativeInt] = None
    grace_epochs: PositiveInt = 1  # ASHA: epochs every trial runs before it may be stopped

    @model_validator(mode="after")
    def _check(self) -> "SearchSpec":
        kinds = {name: d.kind for name, d in self.space.items()}
        if self.algorithm == "grid":
            ranged = sorted(n for n, k in kinds.items() if k in ("loguniform", "uniform"))
            if ranged:
                raise ValueError(f"algorithm grid takes grid or choice values, not ranges ({', '.join(ranged)})")
        elif self.algorithm in PACKAGES:
            gridded = sorted(n for n, k in kinds.items() if k == "grid")
            if gridded:
                raise ValueError(f"algorithm {self.algorithm} cannot search grid values ({', '.join(gridded)}): "
                                 "use choice, or algorithm grid/random")
            if importlib.util.find_spec(PACKAGES[self.algorithm]) is None:
                raise ValueError(f"algorithm {self.algorithm} needs the {PACKAGES[self.algorithm]} package, "
                                 f"which is not installed: {INSTALL[self.algorithm]}")
        return self

    @property
    def samples(self) -> int:
        return self.num_samples or (1 if self.algorithm == "grid" else 8)

    def trials(self) -> int:
        """How many trials the search runs."""
        grid = 1
        for d in self.space.values():
            if d.kind == "grid" or (self.algorithm == "grid" and d.kind == "choice"):
                grid *= len(d.values)
        return grid * self.samples

    def largest(self, name: str, default):
        """The largest value a parameter takes (ASHA's max_t for epochs, the memory estimate's batch)."""
        d = self.space.get(name)
        return default if d is None else max(d.values)


def check_against(search: SearchSpec, params) -> None:
    """Every searched parameter is a searchable field of params (a TrainParams), every value one it takes."""
    fields = set(type(params).model_fields) - NOT_SEARCHABLE
    for name, dim in search.space.items():
        if name != "lr" and name not in fields:
            raise ValueError(f"search.space.{name}: not a parameter of this protocol "
                             f"(searchable: {', '.join(sorted(fields | {'lr'}))})")
        if name == "lr":
            if min(dim.values) <= 0:
                raise ValueError(f"search.space.lr: learning rates must be > 0, not {dim.values}")
            continue
        integer = type(params).model_fields[name].annotation in (int,) or isinstance(getattr(params, name), int)
        if dim.kind in ("loguniform", "uniform") and integer and not isinstance(getattr(params, name), bool):
            raise ValueError(f"search.space.{name}: an integer parameter: give its values with choice or grid")
        for value in dim.values:
            try:
                type(params).model_validate({**params.model_dump(exclude={"search"}), name: value})
            except Exception as e:  # pydantic's ValidationError: its first message, in one line
                first = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
                raise ValueError(f"search.space.{name}: {value!r} is not a valid value ({first})") from None
    if "lr" not in search.space and len(params.lrs) != 1:
        raise ValueError("search.space has no lr: add one, or give one learning rate in params.lrs")


def check_budgets(cells) -> None:
    """Backbones compared under one search get one budget: per task and protocol, every backbone's
    searched cells (plan.Cell) run the same numbers of trials. Else one line (ConfigError), at planning."""
    budgets: Dict[tuple, Dict[str, set]] = {}
    for cell in cells:
        search = cell.params.get("search")
        if search:
            trials = SearchSpec.model_validate(search).trials()
            budgets.setdefault((cell.task.name, cell.protocol), {}).setdefault(cell.backbone.label, set()).add(trials)
    for (task, protocol), per in sorted(budgets.items()):
        if len({frozenset(v) for v in per.values()}) > 1:
            each = "; ".join(f"{b}: {', '.join(map(str, sorted(v)))}" for b, v in sorted(per.items()))
            raise ConfigError(f"protocol '{protocol}' on task '{task}': backbones compared under unequal search "
                              f"budgets (trials per backbone: {each}); give their search blocks the same num_samples")


def tune_space(search: SearchSpec) -> Dict[str, Any]:
    from ray import tune

    grid_choices = search.algorithm == "grid"
    out = {}
    for name, d in search.space.items():
        if d.kind == "loguniform":
            out[name] = tune.loguniform(*d.values)
        elif d.kind == "uniform":
            out[name] = tune.uniform(*d.values)
        elif d.kind == "grid" or grid_choices:
            out[name] = tune.grid_search(list(d.values))
        else:
            out[name] = tune.choice(list(d.values))
    return out


def algorithm(search: SearchSpec, max_concurrent: int, seed: int):
    """Tune's search algorithm for the block: a seeded BasicVariantGenerator (grid, random), or a
    seeded OptunaSearch (TPESampler) / HyperOptSearch behind a ConcurrencyLimiter. The metric and
    mode come from TuneConfig (Tune refuses them twice)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if search.algorithm in ("grid", "random"):
        return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=seed)
    if search.algorithm == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(sampler=TPESampler(seed=seed))
    else:
        from ray.tune.search.hyperopt import HyperOptSearch

        searcher = HyperOptSearch(random_state_seed=seed)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def configurations(search: SearchSpec, seed: int, n: Optional[int] = None) -> List[Dict[str, Any]]:
    """The first n configurations (default: every trial) the seeded searcher proposes, with no results
    reported: what a search starts with. Runs no trial and needs no Ray cluster."""
    n = search.trials() if n is None else n
    if search.algorithm in ("grid", "random"):
        from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
        from ray.tune.search.variant_generator import generate_variants

        rng = _BackwardsCompatibleNumpyRng(seed)  # one stream over the samples, as BasicVariantGenerator
        out: List[Dict[str, Any]] = []
        while len(out) < n:
            out += [spec["config"] for _, spec in generate_variants({"config": tune_space(search)}, random_state=rng)]
        return out[:n]
    searcher = algorithm(search, n, seed)
    searcher.set_search_properties("selection", "max", tune_space(search))
    return [searcher.suggest(f"preview_{i}") for i in range(n)]
