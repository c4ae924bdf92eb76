"""Where a run's words and numbers go: stderr, run_dir/train.log and run_dir/metrics.jsonl.

stdout is reserved for translations, so every log line goes to stderr (and to train.log during
training); every log or validation event is also one JSON object per line in metrics.jsonl.
This module formats and routes; it does not decide what is worth logging.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mtkit import files

log = logging.getLogger("mtkit")

LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def setup_logging(verbosity: int = 0) -> None:
    """Send mtkit's log to stderr at the level given by -v/-q (idempotent).

    The logger itself passes everything; each handler filters, so train.log keeps INFO lines even
    under -q. Without this call (mtkit used as a library) only warnings reach stderr.
    """
    log.setLevel(logging.DEBUG)
    log.propagate = False
    level = LEVELS.get(max(-1, min(1, verbosity)), logging.INFO)
    for h in log.handlers:
        if getattr(h, "_mtkit_stderr", False):
            h.setLevel(level)
            return
    handler = _BarAwareHandler(sys.stderr)
    handler.setFormatter(_StderrFormatter("%(message)s"))
    handler.setLevel(level)
    handler._mtkit_stderr = True  # type: ignore[attr-defined]
    log.addHandler(handler)


class _StderrFormatter(logging.Formatter):
    """Plain messages; a warning starts with `warning: `, as an error line starts with `error: `."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno == logging.WARNING else text


class _BarAwareHandler(logging.StreamHandler):
    """Writes above a live tqdm bar (tqdm.write) so log lines never garble it."""

    def emit(self, record: logging.LogRecord) -> None:
        if PROGRESS["bar"] is None:
            return super().emit(record)
        try:
            PROGRESS["bar"].write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


PROGRESS: dict[str, Any] = {"bar": None}


def progress_bar(total: int | None, initial: int, unit: str) -> tqdm | None:
    """A tqdm bar on stderr when it is a terminal, else None (plain log lines do the job)."""
    if not sys.stderr.isatty():
        return None
    bar = tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
    PROGRESS["bar"] = bar
    return bar


def close_progress_bar() -> None:
    if PROGRESS["bar"] is not None:
        PROGRESS["bar"].close()
        PROGRESS["bar"] = None


def add_log_file(path: Path) -> logging.Handler:
    """Also append the log, with timestamps, to `path` (returned so the caller can remove it)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)  # library use without setup_logging: the file still gets INFO
    log.addHandler(handler)
    return handler


class MetricsWriter:
    """Appends one JSON object per event to metrics.jsonl, flushed at once (a crash loses none)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"event": event, "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in fields.items()})
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable instead of invalid
    return v


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All events of a metrics.jsonl file (a torn last line from a crash is skipped)."""
    events = []
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def drop_metrics_after(path: Path, step: int) -> int:
    """On resume: remove the events of updates after `step` (the checkpoint's), which the resumed
    run replays, and any torn line a kill left; returns how many were dropped. Plots and tables
    then never count a step twice."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        files.write_text(path, "".join(line + "\n" for line in kept))
    return dropped


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
