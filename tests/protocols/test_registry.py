"""Every protocol module on disk is registered: one that forgets its @register_protocol, or that
raddist/protocols/__init__.py forgets to import, fails here. The modules are found on disk."""

import pytest

from raddist import protocols
from raddist.protocols import trainable
from tests.helpers import calls_to, package_modules

# modules of raddist/protocols that are not protocols; a new module is either a protocol or listed here
HELPERS = {"base", "features", "neighbours", "registry", "selection", "seg_common", "stopping"}
TOP = package_modules(protocols)
TRAINABLE = package_modules(trainable)  # the Ray Train machinery: a module there may register, need not


def registered_by(module: str) -> list:
    return [r.name for r in protocols.records() if r.run.__module__ == module]


@pytest.mark.parametrize("module", sorted(TOP))
def test_each_protocol_module_registers_its_protocol(module):
    short = module.rsplit(".", 1)[-1]
    if short in HELPERS:
        assert not registered_by(module)
        return
    registers = calls_to(TOP[module], "register_protocol")
    assert registers, (f"{TOP[module]} registers no protocol: decorate its run with @register_protocol, or list "
                       f"it in HELPERS here if it is not a protocol")
    assert len(registered_by(module)) == registers, (
        f"{module}: {registers} register_protocol call(s), {len(registered_by(module))} record(s); is it imported "
        f"in raddist/protocols/__init__.py?")


def test_a_trainable_module_that_registers_is_imported():
    for module, path in TRAINABLE.items():
        assert len(registered_by(module)) == calls_to(path, "register_protocol"), module


def test_every_record_comes_from_a_module_on_disk():
    on_disk = set(TOP) | set(TRAINABLE)
    assert {r.run.__module__ for r in protocols.records()} <= on_disk
    assert sum(calls_to(p, "register_protocol") for m, p in {**TOP, **TRAINABLE}.items() if not m.endswith(".registry")) \
        == len(protocols.names())


def test_the_helpers_listed_exist():
    assert {m.rsplit(".", 1)[-1] for m in TOP} >= HELPERS
