"""The paper-grid GPU-hour estimate: which jobs it counts, and its arithmetic."""

import pytest

from raddist.cost import DECODE_CEILING, H100_FORWARD, REFERENCE_IMAGES, paper_gpu_hours


def test_paper_estimate_counts_the_classification_jobs_it_has_image_counts_for():
    paper = paper_gpu_hours()
    assert set(paper["task"]) == set(REFERENCE_IMAGES)  # no segmentation job counted as free
    embedding = paper[paper.kind == "embedding"]
    assert len(embedding) == 14 * len(REFERENCE_IMAGES)  # one job per (backbone, classification dataset)
    # fine-tuning, LoRA and BitFit on the 5 ViTs of paper.yaml, on its 3 datasets with image counts
    assert paper[paper.kind != "embedding"].groupby("kind").size().to_dict() == {"bitfit": 15, "finetune": 15,
                                                                                  "lora": 15}
    paper = embedding
    row = paper[(paper.backbone == "dinov2_vitg14") & (paper.task == "nih_chestxray14")].iloc[0]
    assert row["img_s"] == min(H100_FORWARD["dinov2_vitg14"][0], DECODE_CEILING) == 611
    assert row["gpu_hours"] == pytest.approx(112_120 / 611 / 3600)
    small = paper[(paper.backbone == "dinov2_vits14") & (paper.task == "chexpert")].iloc[0]
    assert small["img_s"] == DECODE_CEILING  # decoding, not the model, bounds the small ViT
