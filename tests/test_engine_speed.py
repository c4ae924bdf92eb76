"""Tests for decoding/engine_speed.py: CTranslate2 int8 against mtkit's own decoding, timed once per machine."""

import json

import pytest

from mtkit import extras
from mtkit.decoding import engine_speed


def test_hint_only_where_ctranslate2_is_clearly_faster():
    assert engine_speed.hint("runs/x/best.pt", None) is None  # not installed
    assert engine_speed.hint("runs/x/best.pt", 1.05) is None
    line = engine_speed.hint("runs/x/best.pt", 1.5)
    assert "about 1.5x as fast" in line
    assert "mtkit export runs/x/best.pt -o best-ct2 --quantization int8" in line
    assert "mtkit translate best-ct2 --engine ctranslate2" in line


def test_timed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    timings = []
    monkeypatch.setattr(engine_speed, "time_engines", lambda: timings.append(1) or 1.7)
    assert engine_speed.ct2_int8_speedup() == 1.7
    assert engine_speed.ct2_int8_speedup() == 1.7
    assert timings == [1]
    cache = tmp_path / "mtkit" / engine_speed.CACHE_FILE
    key = engine_speed._machine_key(extras.ctranslate2().__version__)
    assert json.loads(cache.read_text()) == {key: 1.7}
    cache.write_text("{not json")  # damaged: timed again and rewritten
    assert engine_speed.ct2_int8_speedup() == 1.7 and timings == [1, 1]
    assert json.loads(cache.read_text()) == {key: 1.7}


def test_a_read_only_cache_dir_still_answers(tmp_path, monkeypatch):
    (tmp_path / "mtkit").write_text("a file where the directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(engine_speed, "time_engines", lambda: 0.8)
    assert engine_speed.ct2_int8_speedup() == 0.8


def test_without_ctranslate2_there_is_nothing_to_time(monkeypatch):
    def missing():
        raise extras.MtkitError("CTranslate2 is not installed")

    monkeypatch.setattr(extras, "ctranslate2", missing)
    monkeypatch.setattr(engine_speed, "time_engines", lambda: pytest.fail("timed without ctranslate2"))
    assert engine_speed.ct2_int8_speedup() is None


@pytest.mark.slow
def test_time_engines_times_both_on_this_cpu():
    import torch

    state = torch.random.get_rng_state()
    speedup = engine_speed.time_engines()
    assert 0.05 < speedup < 20  # a ratio of two real timings, whatever this CPU is
    assert torch.equal(torch.random.get_rng_state(), state)  # nobody's random stream was touched


def test_a_failed_timing_is_no_answer_and_no_error(tmp_path, monkeypatch):
    def fails():
        raise RuntimeError("int8 is not supported on this device")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(engine_speed, "time_engines", fails)
    assert engine_speed.ct2_int8_speedup() is None
    assert not (tmp_path / "mtkit" / engine_speed.CACHE_FILE).exists()
