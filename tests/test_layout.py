"""Tests mirror the source: raddist/<path>/<name>.py is tested in tests/<path>/test_<name>.py. A new
module without its test module fails here; the modules below are the ones still without one (their
behaviour is tested through others' tests, e.g. embed.jobs through tests/embed/test_pipeline.py).
Take a module off the list when it gets its test module; never add one.

And tests share helpers through tests/helpers.py (or a package's helper module) and fixtures
through conftest.py, never by importing another test module or conftest."""

import os
import re

import raddist

SOURCE = os.path.dirname(os.path.abspath(raddist.__file__))
TESTS = os.path.dirname(os.path.abspath(__file__))

WITHOUT_TEST_MODULE = {
    "backbones/hf_adapter.py", "data/contract.py",
    "embed/jobs.py", "preflight.py", "privacy.py",
    "protocols/bitfit.py", "protocols/dora.py", "protocols/finetune.py", "protocols/lora.py",
    "protocols/seg_linear.py", "protocols/seg_unet.py", "protocols/trainable/method.py", "results.py",
}


def untested() -> set:
    missing = set()
    for folder, _, files in os.walk(SOURCE):
        for name in files:
            if name.endswith(".py") and name != "__init__.py":
                rel = os.path.relpath(os.path.join(folder, name), SOURCE)
                test = os.path.join(TESTS, os.path.dirname(rel), f"test_{name}")
                if not os.path.exists(test):
                    missing.add(rel.replace(os.sep, "/"))
    return missing


def test_every_new_source_module_has_its_test_module():
    new = sorted(untested() - WITHOUT_TEST_MODULE)
    assert not new, f"no test module for {new}: add tests/<same path>/test_<name>.py"


def test_the_list_of_exceptions_names_modules_that_exist():
    gone = [m for m in WITHOUT_TEST_MODULE if not os.path.exists(os.path.join(SOURCE, m))]
    assert not gone, f"{gone} no longer exist: take them off WITHOUT_TEST_MODULE"


# test modules that still import from another test module (to move to helpers.py / conftest.py): none
IMPORTS_A_TEST_MODULE: set = set()


def test_no_test_module_imports_another():
    offenders = set()
    for folder, _, files in os.walk(TESTS):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    text = f.read()
                if re.search(r"^\s*(from|import) tests(\.\w+)*\.(test_\w+|conftest)\b", text, re.M):
                    offenders.add(os.path.relpath(os.path.join(folder, name), TESTS).replace(os.sep, "/"))
    new = sorted(offenders - IMPORTS_A_TEST_MODULE)
    assert not new, f"{new} import from another test module or conftest: move what they share to tests/helpers.py"
