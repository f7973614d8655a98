"""The report's choices section says what ran: the stopping rules, few-shot validation, thresholds, B."""

from raddist.report_choices import choices_section


def test_choices_name_the_rules_the_cells_ran_under():
    rule = "validation plateau: patience 40 epochs (checked every 1), min_delta 0.0001, constant learning rate"
    cells = [
        {"protocol": "seg_linear", "selected": {"stopping_rule": rule, "stopped": "plateau"}},
        {"protocol": "seg_linear", "selected": {"stopping_rule": rule, "stopped": "cap"}},
        {"protocol": "fewshot", "selected": {"validation": "kshot", "stopping_rule": "fixed 10 epochs, cosine to zero"}},
        {"protocol": "fewshot", "selected": {"validation": "full"}},
        {"protocol": "knn", "selected": {"k": 10}},
    ]
    text = choices_section(cells, {"bootstrap": 1000})
    assert f"`seg_linear` (2 cells): {rule}; 1 stopped at their epoch cap" in text
    assert "`fewshot` (1 cells): fixed 10 epochs" in text and "knn" not in text
    assert "k-shot draw of the validation split (as many examples as the training draw) in 1 cells" in text
    assert "the whole validation split (more than a k-shot user has) in 1 cells" in text
    assert "fixed 0.5" in text and "1,000 resamples of patients" in text


def test_choices_leave_out_what_no_cell_ran():
    text = choices_section([{"protocol": "knn", "selected": {"k": 5}}], {})
    assert "Stopping" not in text and "Few-shot" not in text and "resamples" not in text
    assert "Thresholds" in text
