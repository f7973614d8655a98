"""A config is read from a file with ${VARS} and overrides; it is named or given by path: a shipped config's name wins over a folder of that name (a
research directory holding its manuscript in `paper/`), a path wins only when it is a file, and any
error reading a config is one line."""

import pytest

from raddist import config as config_lib
from raddist.cli import main
from raddist.errors import ConfigError


def _plan(capsys, *argv):
    code = main(["plan", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_folder_does_not_shadow_a_shipped_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "manuscript.tex").write_text("\\documentclass{article}")
    code, out, err = _plan(capsys, "paper")
    assert code == 0, err
    assert '"cells"' in out and "Traceback" not in err


def test_a_file_of_that_name_wins(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper").write_text("backbones: []\n")  # a file named like a shipped config is the user's
    code, out, err = _plan(capsys, "paper")
    assert code == 2 and err.count("\n") == 1 and err.startswith("raddist: error: paper: backbones")


@pytest.mark.parametrize("name, content, says", [
    ("folder", None, "folder is a directory, not a config file"),
    ("broken.yaml", "a: [1\n  b: 2\n", "broken.yaml: not valid YAML"),
    ("binary.yaml", b"\xff\xfe\x00\x81", "binary.yaml: not a text file"),
    ("absent.yaml", False, "config not found: absent.yaml"),
])
def test_any_error_reading_a_config_is_one_line(tmp_path, monkeypatch, capsys, name, content, says):
    monkeypatch.chdir(tmp_path)
    if content is None:
        (tmp_path / name).mkdir()
    elif isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content:
        (tmp_path / name).write_text(content)
    code, out, err = _plan(capsys, name)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"raddist: error: {says}"), err


def test_load_expands_env_vars_and_reports_missing_file(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("DATA", "/mnt/data")
    data = {"backbones": [{"name": "tiny_vit", "weights": "random"}], "protocols": [{"name": "knn"}],
            "tasks": [{"name": "chest", "manifest": "", "type": "multilabel", "labels": ["a", "b"]}]}
    data["tasks"][0]["manifest"] = "${DATA}/m.parquet"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    s = config_lib.load(str(tmp_path / "s.yaml"), overrides={"storage.cache": "/tmp/c"})
    assert s.tasks[0].manifest == "/mnt/data/m.parquet"
    assert s.storage.cache_uri() == "/tmp/c"
    with pytest.raises(ConfigError, match="config not found"):
        config_lib.load(str(tmp_path / "missing.yaml"))
