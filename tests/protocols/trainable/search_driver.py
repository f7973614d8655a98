"""The search that test_tune_search.py runs: a LoRA cell with a 4-trial seeded search on a tiny ViT.

Run as a module (python -m tests.protocols.trainable.search_driver MANIFEST CHECKPOINT_DIR ADDRESS) it is
a sweep's driver process: it joins the Ray cluster at ADDRESS and runs the search, until it is killed."""

import importlib.util
import sys

from raddist import protocols
from raddist.protocols.base import TrainInputs

ALGORITHM = "optuna" if importlib.util.find_spec("optuna") else "random"
SEARCH = {"space": {"lr": {"loguniform": [3e-4, 3e-2]}, "r": {"choice": [2, 4]}},
          "algorithm": ALGORITHM, "scheduler": "asha", "num_samples": 4, "max_concurrent": 1, "seed": 7}

# Each fit's worker takes (2 - CELL_CPUS) / 2 = 0.2 CPU. ASHA stops a trial at a rung (search.asha_scheduler)
# by killing it, and with it the Train controller, whose worker group's placement group is then left to
# Train's PlacementGroupCleaner; that needs the state API, which a cluster without the dashboard (these
# tests) lacks, so here each fit may leave its 0.2 CPU held: 4 fits and the scorers still fit 2 CPUs.
CELL_CPUS = 1.6


def run(table, checkpoint_dir):
    lora = protocols.get("lora")
    params = lora.parse({"epochs": 2, "batch_size": 8, "search": SEARCH})
    inputs = TrainInputs(task_type="binary", class_names=["top"], label_columns=["top"], manifest=table,
                         backbone="tiny_vit", weights="random", contract={"size": 64},
                         checkpoint_dir=str(checkpoint_dir), num_workers=1, use_gpu=False, cell_cpus=CELL_CPUS)
    return lora.run(inputs, params, seed=0)


if __name__ == "__main__":
    import pyarrow.parquet as pq
    import ray

    ray.init(address=sys.argv[3], logging_level="WARNING")
    run(pq.read_table(sys.argv[1]), sys.argv[2])
