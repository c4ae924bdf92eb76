"""Helpers of the drivers that run inside the peers' venvs (no mtkit import there).

Not a command. Each translation driver takes the same arguments (parse_args), reads the source
piece file, loads its model once, translates an untimed warm-up slice, then times translating all
sentences, and writes the output pieces (one line per sentence) and a JSON result file that the
calling script (opennmt.py, joey.py, ct2.py) turns into the report.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def parse_args(doc: str, extra=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--src", required=True, help="source piece file")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--batch-sents", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--warmup-sents", type=int, default=64)
    ap.add_argument("--pieces", required=True, help="output: one line of pieces per sentence")
    ap.add_argument("--result", required=True, help="output: JSON with timings and memory")
    if extra:
        extra(ap)
    return ap.parse_args()


def read_lines(path: str, limit: int | None) -> list[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines[:limit]


def rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class Clock:
    def __init__(self):
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t0 = now - self.t0, now
        return dt


def write_outputs(args, hyps: list[list[str]], **result) -> None:
    with open(args.pieces, "w", encoding="utf-8", newline="\n") as f:
        for pieces in hyps:
            f.write(" ".join(pieces) + "\n")
    result.update(pieces=args.pieces, sentences=len(hyps), peak_rss_mb=rss_mb())
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(result, f)
