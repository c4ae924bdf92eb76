"""Tests for mtkit.memory: the glibc allocator settings and the peak-memory figure."""

import os
import subprocess
import sys

import pytest

from mtkit.memory import peak_rss_mb

PROBE = "from mtkit.memory import keep_freed_memory as k; print(k(), k())"


def probe(**env) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_applies_once_on_linux():
    assert probe(MTKIT_MALLOC="") == "True True"


def test_mtkit_malloc_system_keeps_the_defaults():
    assert probe(MTKIT_MALLOC="system") == "False False"


def test_peak_rss_is_in_megabytes():
    blob = bytearray(64 << 20)  # 64 MB touched
    assert 64 <= peak_rss_mb() < 1 << 20
    del blob
