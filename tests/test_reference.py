"""The report's list of differences from the reference study's code (raddist.reference)."""

from raddist.reference import ALWAYS, RADDIST_ONLY, deviations, markdown


def test_each_mode_lists_what_it_changes():
    assert deviations("reference") == ALWAYS  # the reference's settings: only its defects are fixed
    assert deviations("raddist") == ALWAYS + RADDIST_ONLY
    assert [w for w, _, _ in RADDIST_ONLY] == ["kNN", "ML-kNN", "linear probe"]
    for what, reference, ours in deviations("raddist"):
        assert what and reference and ours and reference != ours


def test_markdown_is_one_table_row_per_difference():
    for mode, rows in (("reference", len(ALWAYS)), ("raddist", len(ALWAYS) + 3)):
        text = markdown(mode)
        lines = text.splitlines()
        assert lines[0] == "## How this run differs from the reference study" and f"Mode **{mode}**" in text
        table = [line for line in lines if line.startswith("| ")]
        assert table[0] == "| what | reference | raddist |" and len(table) == 1 + rows
        assert all(line.count(" | ") == 2 for line in table[1:])  # no cell breaks the table
    assert "`paper`" in markdown("reference") and "`paper-recommended`" in markdown("raddist")
