"""The report's list of differences from the reference study's code (raddist.reference), and the
reference settings that mode reference (paper.yaml) puts in force."""

import json

import pandas as pd

from raddist import config as config_lib, protocols, spec as spec_lib
from raddist.reference import ALWAYS, RADDIST_ONLY, SETTINGS, deviations, in_force, markdown

CNNS = {"resnet152", "vgg19", "densenet201"}


def test_each_mode_lists_what_it_changes():
    assert deviations("reference") == ALWAYS  # the reference's settings: only its defects and what cannot be had
    assert deviations("raddist") == ALWAYS + RADDIST_ONLY
    assert [w for w, _, _ in RADDIST_ONLY] == [
        "kNN", "kNN votes", "ML-kNN", "linear probe", "linear-probe inputs", "multilabel linear-probe loss",
        "CNN linear probes", "segmentation heads", "LoRA biases", "fine-tuning, LoRA, BitFit optimiser"]
    for what, reference, ours in deviations("raddist"):
        assert what and reference and ours and reference != ours
    assert "segmentation decoders" in [w for w, _, _ in ALWAYS]  # not reproducible


def test_markdown_is_one_table_row_per_difference():
    for mode, rows in (("reference", len(ALWAYS)), ("raddist", len(ALWAYS) + len(RADDIST_ONLY))):
        text = markdown(mode)
        lines = text.splitlines()
        assert lines[0] == "## How this run differs from the reference study" and f"Mode **{mode}**" in text
        table = [line for line in lines if line.startswith("| ")]
        assert table[0] == "| what | reference | raddist |" and len(table) == 1 + rows
        assert all(line.count(" | ") == 2 for line in table[1:])  # no cell breaks the table
    assert "`paper`" in markdown("reference") and "`paper-recommended`" in markdown("raddist")


def _paper_params(monkeypatch):
    monkeypatch.setenv("DATA", "/data")
    monkeypatch.setenv("OUTPUT", "/out")
    paper = config_lib.load("paper")
    assert paper.mode == "reference"
    return paper, [(p, protocols.get(p.name).params.model_validate(p.parsed_params().model_dump()).model_dump())
                   for p in paper.protocols]


def test_paper_puts_every_reference_setting_in_force(monkeypatch):
    _, entries = _paper_params(monkeypatch)
    assert in_force([(p.name, params) for p, params in entries]) == SETTINGS
    by_name = {}
    for p, params in entries:
        by_name.setdefault(p.name, []).append((p, params))
    for _, params in by_name["knn"]:
        assert (params["bank"], params["vote_pool"], params["select_by"]) == ("train", 200, "top1")
    for p, params in by_name["linear"] + [(p, q["linear"]) for p, q in by_name["fewshot"]]:
        assert (params["multilabel_loss"], params["lr_batch_scaling"], params["normalize"]) == ("batch_sum", False, "none")
        # CNNs: the final pooled feature only; ViTs: the reference's last 1 or 4 blocks
        assert params["blocks"] == ([1] if set(p.backbones) <= CNNS else [1, 4])
    covered = set().union(*(set(p.backbones) for p, _ in by_name["linear"]))
    assert CNNS < covered and len(covered) == 14
    for _, params in by_name["seg_linear"] + by_name["seg_unet"]:
        assert (params["optimizer"], params["weight_decay"], params["loss"], params["batch_size"], params["refit"]) \
            == ("sgd", 0.0, "dice", 128, True)
    assert by_name["lora"][0][1]["bias"] == "lora_only"
    for name in ("finetune", "lora", "bitfit"):  # SGD, the backbone at 1e-5, the grid of 16 heads
        (_, params), = by_name[name]
        assert (params["optimizer"], params["weight_decay"], params["lrs"], params["epochs"], params["multilabel_loss"]) \
            == ("sgd", 0.0, [1e-5], 10, "batch_sum")
        assert params["head_grid"] == {"lrs": [1e-3, 5e-3, 1e-2, 5e-2], "blocks": [1, 4], "avgpool": [True, False]}


def test_the_report_names_the_settings_in_force():
    results = pd.DataFrame({"protocol": ["lora", "knn", "knn"],
                            "params": [json.dumps({"bias": "lora_only"}), json.dumps({"bank": "train+val"}),
                                       json.dumps({"bank": "train", "vote_pool": 200})]})
    text = markdown("reference", results)
    assert "Reference settings in force" in text
    assert '| lora | `bias: "lora_only"` |' in text and '| knn | `bank: "train"` |' in text
    assert "vote_pool: 200" in text and "select_by" not in text and "| seg_unet |" not in text
    assert "in force" not in markdown("raddist", results.iloc[1:2])  # raddist's defaults: none
