"""`mtkit info`: versions, the CPU and what it computes natively, threads and GPUs, and the
precisions `auto` picks here for training and for decoding, and how CTranslate2's int8 compares
with mtkit's own decoding here: what a bug report needs.

The facts come from hardware.py (decoding's int8 choice from decoding/precision.py, which times
it); a model's run manifest (`mtkit info MODEL`) is training/manifest.py's.
"""

from __future__ import annotations

from typing import Any

from mtkit.decoding.engine_speed import ct2_int8_speedup
from mtkit.decoding.precision import resolve_decode_precision
from mtkit.hardware import machine_report


def info_report() -> dict[str, Any]:
    """hardware.machine_report, with what decode.precision auto picks on this CPU after the
    training precision."""
    report = machine_report()
    at = list(report).index("auto_precision_cpu") + 1
    items = list(report.items())
    items.insert(at, ("auto_decode_precision_cpu", resolve_decode_precision("auto", "cpu")[0]))
    speedup = ct2_int8_speedup()  # None without ctranslate2
    items.insert(at + 1, ("ct2_int8_vs_native_cpu", "ctranslate2 not installed" if speedup is None else
                          f"{speedup:.1f}x as fast (default-size model, beam 5; engine_speed.py)"))
    return dict(items)


def format_report(report: dict[str, Any]) -> str:
    """A report as aligned `key: value` lines."""
    lines = []
    for key, value in report.items():
        if key == "gpus":
            value = "none" if not value else "; ".join(
                f"{g['name']} ({g['memory_gib']} GiB, sm {g['capability']}, native bf16 {'yes' if g['native_bf16'] else 'no'})"
                for g in value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        lines.append(f"{key + ':':<27}{value}")
    return "\n".join(lines)
