"""Every registered protocol keeps the registry's contract (raddist/protocols/registry.py)."""

import subprocess
import sys

import pytest
from pydantic import BaseModel, ValidationError

from raddist import protocols
from raddist.protocols.base import CLASSIFICATION, TASK_TYPES
from raddist.protocols.registry import ProtocolRecord, register_protocol

ALL = protocols.names()  # that every protocol module registers is tests/protocols/test_registry.py's


@pytest.mark.parametrize("name", ALL)
def test_record_contract(name):
    record = protocols.get(name)
    assert isinstance(record, ProtocolRecord) and record.name == name and callable(record.run)
    assert record.task_types and set(record.task_types) <= set(TASK_TYPES)
    segmentation = record.task_types == ("segmentation",)
    assert record.reads == ("patch_tokens" if segmentation else record.reads)
    assert (record.patch_token_blocks > 0) == (record.reads == "patch_tokens")
    assert record.trainable == (record.reads == "images") == (not record.needs_embeddings)
    if record.trainable:
        assert set(record.task_types) == set(CLASSIFICATION)
    params = record.params()  # every field has a default
    assert isinstance(params, BaseModel)
    with pytest.raises(ValidationError, match="not_a_field"):
        record.parse({"not_a_field": 1})
    cells = record.variants(params)
    assert cells and all(record.parse(c) for c in cells)  # every cell's params parse back


@pytest.mark.parametrize("name", [n for n in ALL if protocols.get(n).expand is None])
def test_single_cell_protocols_expand_to_themselves(name):
    params = protocols.get(name).params()
    assert protocols.get(name).variants(params) == [params.model_dump()]


def test_bad_values_name_the_field():
    with pytest.raises(ValidationError, match="features"):
        protocols.get("knn").params(features="cls_everything")
    with pytest.raises(ValidationError, match="lrs"):
        protocols.get("linear").params(lrs=[])


def test_a_name_registers_once_and_unknown_names_list_the_known():
    with pytest.raises(ValueError, match="registered twice"):
        register_protocol("knn", task_types=CLASSIFICATION, params=BaseModel)(lambda *a: None)
    with pytest.raises(KeyError, match="allowed: \\['attention_mil'"):
        protocols.get("nearest")


def test_planning_imports_neither_torch_nor_sklearn():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from raddist import protocols\n"
        "for r in protocols.records():\n"
        "    r.variants(r.params())\n"
        "heavy = [m for m in ('sklearn', 'scipy', 'monai', 'timm', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
