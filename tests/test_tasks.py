"""One vocabulary: the spec, the protocols and the manifest validate against the same names."""

import typing

from raddist import tasks
from raddist.data import manifest
from raddist.protocols import base
from raddist.spec import TaskType


def test_every_stage_uses_the_one_vocabulary():
    assert typing.get_args(TaskType) == tasks.TASK_TYPES
    assert base.TASK_TYPES is tasks.TASK_TYPES and base.CLASSIFICATION is tasks.CLASSIFICATION
    assert set(tasks.CLASSIFICATION) < set(tasks.TASK_TYPES)
    assert manifest.SPLITS is tasks.SPLITS == ("train", "val", "test")
