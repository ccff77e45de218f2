"""Converting leaves no alarm and no setting behind: an int8 TFLite conversion is not "in training mode", and
the converter's environment (progress display, TensorFlow's log level) is put back."""

from __future__ import annotations

import logging
import os

import pytest

from latency_tables.convert import _CONVERTER_ENV, export_for
from latency_tables.keys import SpaceIndex


@pytest.mark.runtime
def test_int8_tflite_conversion_is_in_eval_mode_and_restores_the_environment(tiny_space, tmp_path, caplog,
                                                                              monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # one set by the user, one not: both as they were after
    monkeypatch.delenv("LITERT_TORCH_SHOW_PROGRESS", raising=False)
    before = {name: os.environ.get(name) for name in _CONVERTER_ENV}
    key = SpaceIndex(tiny_space).keys[0]
    with caplog.at_level(logging.WARNING):
        path = export_for("litert", "int8", key, tmp_path / "k.tflite")
    assert path.stat().st_size > 0
    assert not [r.getMessage() for r in caplog.records if "training mode" in r.getMessage()]
    assert {name: os.environ.get(name) for name in _CONVERTER_ENV} == before
