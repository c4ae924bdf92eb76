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


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_applies_once_on_linux():
    assert probe(MTKIT_MALLOC="") == "True True"


@pytest.mark.slow
def test_mtkit_malloc_system_keeps_the_defaults():
    assert probe(MTKIT_MALLOC="system") == "False False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_peak_rss_is_in_megabytes():
    blob = bytearray(b"x" * (64 << 20))  # 64 MB written, so resident
    status = open("/proc/self/status").read()
    hwm_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    assert abs(peak_rss_mb() - hwm_kb / 1024) <= 2  # the kernel's own peak, in MB
    assert peak_rss_mb() >= 64
    del blob


@pytest.mark.slow
@pytest.mark.parametrize("preset", [None, "512"])
def test_onednn_kernel_cache_is_bounded_unless_the_user_set_it(preset):
    """bf16 training kept up to 1,024 per-shape oneDNN kernels (3.3 GB after 400 Ding updates against
    1.8 GB with 16): the one memory call every entry point makes bounds the cache before the first
    oneDNN call, also with MTKIT_MALLOC=system, and a user's own setting wins."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"} | {"MTKIT_MALLOC": "system"}
    if preset is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = preset
    code = ("import os; from mtkit.memory import keep_freed_memory; keep_freed_memory();"
            " print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (preset or "16")
