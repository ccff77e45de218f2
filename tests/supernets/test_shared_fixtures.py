"""The shared fixtures and markers of tests/conftest.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import tests.conftest as conftest
from supernets.checkpoint import load_checkpoint
from tests.supernets.tiny import tiny_config


def test_the_shared_supernet_is_trained_with_the_tiny_recipe(trained_supernet):
    ckpt = load_checkpoint(trained_supernet)
    assert ckpt.meta["config"] == tiny_config().to_dict() and ckpt.meta["epoch"] == 2
    assert [row["phase"] for row in ckpt.meta["metrics"]] == ["full", "depth"] and ckpt.teacher is not None


def test_missing_runtime_modules_accepts_either_litert_interpreter():
    def only(*present):
        return lambda name: object() if name in present else None

    assert conftest.missing_runtime_modules(only("onnxruntime", "onnx", "tflite_runtime", "litert_torch")) == []
    assert conftest.missing_runtime_modules(only("onnx", "ai_edge_litert")) == [
        "onnxruntime", "litert_torch"]
    assert conftest.missing_runtime_modules(only()) == [
        "onnxruntime", "onnx", "ai_edge_litert or tflite_runtime", "litert_torch"]


class FakeItem:
    def __init__(self, marked: bool) -> None:
        self.marked = marked
        self.added: list = []

    def get_closest_marker(self, name):
        return SimpleNamespace(name=name) if self.marked and name == "runtime" else None

    def add_marker(self, marker) -> None:
        self.added.append(marker)


@pytest.mark.parametrize("missing", [["onnxruntime"], []])
def test_runtime_tests_are_skipped_naming_the_missing_package_and_the_extra(monkeypatch, missing):
    monkeypatch.setattr(conftest, "missing_runtime_modules", lambda: missing)
    marked, plain = FakeItem(True), FakeItem(False)
    conftest.pytest_collection_modifyitems(None, [marked, plain])
    assert plain.added == []
    if not missing:
        assert marked.added == []
        return
    (skip,) = marked.added
    assert skip.name == "skip" and skip.kwargs["reason"] == 'needs onnxruntime: pip install -e ".[runtimes]"'


def test_the_runtime_marker_is_registered(pytestconfig):
    """Registered by tests/conftest.py (--strict-markers would refuse an unregistered one)."""
    assert any(line.startswith("runtime:") and "[runtimes]" in line for line in pytestconfig.getini("markers"))
