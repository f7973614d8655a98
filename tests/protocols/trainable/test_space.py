"""The spec's search: block (raddist.protocols.trainable.space), without Ray: its checks, one line
each, and the seeded searchers' configurations."""

import pytest

from raddist import spec
from raddist.plan import make_plan
from raddist.protocols.trainable import space

BASE = {"backbones": [{"name": "tiny_vit"}],
        "tasks": [{"name": "t", "manifest": "/nowhere/manifest.parquet", "type": "binary", "labels": ["y"]}]}
LORA_SEARCH = {"space": {"lr": {"loguniform": [1e-5, 1e-3]}, "weight_decay": {"choice": [0.0, 0.05]},
                         "r": {"choice": [8, 16, 48]}},
               "algorithm": "random", "num_samples": 6, "seed": 3}


def lora(search=None, **params):
    return spec.ProtocolSpec(name="lora", params=params, search=search)


@pytest.mark.parametrize("search, message", [
    ({"space": {"rank": {"choice": [8]}}}, "search.space.rank: not a parameter of this protocol (searchable: alpha"),
    ({"space": {"lr": {"loguniform": [1e-3, 1e-5]}}}, "loguniform takes [low, high] with low < high"),
    ({"space": {"lr": {"loguniform": [0, 1e-3]}}}, "loguniform needs low > 0"),
    ({"space": {"lr": {"uniform": [1e-4, 1e-3], "choice": [1]}}}, "give exactly one of loguniform"),
    ({"space": {"r": {"uniform": [4, 8]}, "lr": {"choice": [1e-3]}}}, "search.space.r: an integer parameter"),
    ({"space": {"dropout": {"choice": [0.1, 1.5]}, "lr": {"choice": [1e-3]}}}, "search.space.dropout: 1.5 is not a valid"),
    ({"space": {"weight_decay": {"choice": [0.0]}}}, "search.space has no lr"),
    ({"space": {"lr": {"grid": [1e-3]}}, "algorithm": "optuna"}, "algorithm optuna cannot search grid values (lr)"),
    ({"space": {"lr": {"loguniform": [1e-5, 1e-3]}}, "algorithm": "grid"}, "algorithm grid takes grid or choice"),
    ({"space": {"lr": {"choice": [1e-3]}}, "algorithm": "bayesopt"}, "search.algorithm: Input should be"),
    ({"space": {"lr": {"choice": [1e-3]}}, "scheduler": "pbt"}, "search.scheduler: Input should be"),
])
def test_a_bad_search_block_is_one_line_naming_the_field(search, message):
    with pytest.raises(spec.ConfigError) as e:
        spec.parse({**BASE, "protocols": [{"name": "lora", "search": search}]}, source="sweep.yaml")
    line = str(e.value)
    assert line.startswith("sweep.yaml: protocols.0: protocol 'lora'") and message in line, line
    assert "\n" not in line and ";" not in line  # the one mistake, alone


def test_a_searcher_whose_package_is_missing_is_refused_before_ray(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    with pytest.raises(ValueError, match=r"algorithm optuna needs the optuna package.*pip install 'raddist\[search\]'"):
        lora({"space": {"lr": {"loguniform": [1e-5, 1e-3]}}, "algorithm": "optuna"})


def test_only_trainable_protocols_search():
    with pytest.raises(ValueError, match="protocol 'knn' search: only the trainable protocols search"):
        spec.ProtocolSpec(name="knn", search={"space": {"lr": {"choice": [1e-3]}}})


def test_without_a_search_the_cells_are_as_before_and_a_search_makes_new_ones():
    """No search: the params (and so the cell ids) carry no 'search' key, as before searches existed."""
    plain = make_plan(spec.parse({**BASE, "protocols": [{"name": "lora", "params": {"r": 4}}]}))
    searched = make_plan(spec.parse({**BASE, "protocols": [{"name": "lora", "params": {"r": 4},
                                                             "search": LORA_SEARCH}]}))
    assert "search" not in plain.cells[0].params and plain.cells[0].params["r"] == 4
    assert searched.cells[0].params["search"]["num_samples"] == 6
    assert plain.cells[0].id != searched.cells[0].id
    # the cell's params parse back to the same search (what the cell runs)
    from raddist import protocols

    assert protocols.get("lora").parse(searched.cells[0].params).search.samples == 6


@pytest.mark.parametrize("algorithm", ["random", "optuna"])
def test_a_seeded_search_proposes_the_same_configurations(algorithm):
    if algorithm == "optuna":
        pytest.importorskip("optuna")
    search = lora({**LORA_SEARCH, "algorithm": algorithm}).parsed_params().search
    first, again, other = (space.configurations(search, seed) for seed in (3, 3, 4))
    assert first == again and len(first) == 6 and first != other
    assert all(1e-5 <= c["lr"] <= 1e-3 and c["r"] in (8, 16, 48) and c["weight_decay"] in (0.0, 0.05) for c in first)
    assert len({c["lr"] for c in first}) == 6  # sampled, not repeated


def test_a_grid_is_every_combination_once_per_sample():
    search = space.SearchSpec(space={"lr": {"grid": [1e-4, 1e-3]}, "r": {"choice": [4, 8]}}, algorithm="grid",
                              num_samples=2)
    configs = space.configurations(search, seed=0)
    assert search.trials() == 8 and len(configs) == 8
    assert sorted(map(lambda c: (c["lr"], c["r"]), configs[:4])) == [(1e-4, 4), (1e-4, 8), (1e-3, 4), (1e-3, 8)]
    assert configs[:4] == configs[4:]


def test_a_trial_gets_params_with_its_sampled_values():
    params = lora(LORA_SEARCH, epochs=3).parsed_params()
    trial = params.with_trial({"lr": 2e-4, "r": 16, "weight_decay": 0.0})
    assert (trial.lrs, trial.r, trial.weight_decay, trial.epochs, trial.search) == ([2e-4], 16, 0.0, 3, None)
    assert trial.method().r == 16


def test_backbones_compared_under_one_search_get_the_same_budget():
    """Two entries of one protocol, each on its own backbone: the same num_samples plans; another is refused."""
    two = {**BASE, "backbones": [{"name": "tiny_vit"}, {"name": "tiny_cnn"}]}

    def entries(samples_vit, samples_cnn):
        return [{"name": "finetune", "backbones": [b], "search": {**LORA_SEARCH, "space": {"lr": LORA_SEARCH["space"]["lr"]},
                                                                    "num_samples": n}}
                for b, n in (("tiny_vit", samples_vit), ("tiny_cnn", samples_cnn))]

    plan = make_plan(spec.parse({**two, "protocols": entries(4, 4)}))
    assert sorted(c.params["search"]["num_samples"] for c in plan.cells) == [4, 4]
    with pytest.raises(spec.ConfigError) as e:
        make_plan(spec.parse({**two, "protocols": entries(4, 8)}))
    assert str(e.value) == ("protocol 'finetune' on task 't': backbones compared under unequal search budgets "
                            "(trials per backbone: tiny_cnn: 8; tiny_vit: 4); give their search blocks the same "
                            "num_samples")
