"""The by-name class registry behind policies, monitors, attention backends and SScheduler targets."""

import pytest

from context_forge.registry import Registry


def test_register_sets_name_and_keeps_order():
    reg: Registry[type] = Registry("widget")

    @reg.register("b")
    class B:
        pass

    @reg.register("a")
    class A:
        pass

    assert reg.names() == ["b", "a"] and A.name == "a" and reg.lookup("b") is B and "a" in reg


def test_duplicates_and_unknown_names_are_errors():
    reg: Registry[type] = Registry("widget")
    cls = reg.register("x")(type("X", (), {}))
    with pytest.raises(ValueError, match="widget 'x' is already registered"):
        reg.register("x")(cls)
    with pytest.raises(ValueError, match="unknown widget 'y'; available: x"):
        reg.lookup("y")
    tolerant: Registry[type] = Registry("widget", allow_same_class=True)
    tolerant.register("x")(cls)
    assert tolerant.register("x")(cls) is cls
    with pytest.raises(ValueError, match="already registered"):
        tolerant.register("x")(type("Other", (), {}))
