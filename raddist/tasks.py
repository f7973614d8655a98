"""The vocabulary every stage shares, defined once: task types and split names."""

TASK_TYPES = ("multilabel", "binary", "multiclass", "segmentation")
CLASSIFICATION = ("multilabel", "binary", "multiclass")
SPLITS = ("train", "val", "test")
