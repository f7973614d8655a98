"""Every frozen protocol keeps the registry's module contract (raddist/protocols/__init__.py)."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from raddist import protocols
from raddist.protocols.base import TASK_TYPES

FROZEN = ["fewshot", "knn", "linear", "logreg", "mlknn"]


def test_registry_lists_the_frozen_protocols():
    assert set(FROZEN) <= set(protocols.names())


@pytest.mark.parametrize("name", FROZEN)
def test_module_contract(name):
    module = protocols.get(name)
    assert set(module.TASK_TYPES) <= set(TASK_TYPES) - {"segmentation"}
    assert module.NEEDS_EMBEDDINGS is True
    assert callable(module.run)
    module.Params()  # every field has a default
    with pytest.raises(ValidationError, match="not_a_field"):
        module.Params(not_a_field=1)


@pytest.mark.parametrize("name", ["knn", "linear", "logreg", "mlknn"])
def test_single_cell_protocols_expand_to_themselves(name):
    params = protocols.get(name).Params()
    assert protocols.variants(name, params) == [params.model_dump()]


def test_bad_values_name_the_field():
    with pytest.raises(ValidationError, match="features"):
        protocols.get("knn").Params(features="cls_everything")
    with pytest.raises(ValidationError, match="lrs"):
        protocols.get("linear").Params(lrs=[])


def test_planning_imports_neither_torch_nor_sklearn():
    code = (
        "import sys\n"
        "from raddist import protocols\n"
        "for n in protocols.names():\n"
        "    protocols.variants(n, protocols.get(n).Params())\n"
        "heavy = [m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
