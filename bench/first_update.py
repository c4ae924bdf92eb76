#!/usr/bin/env python3
"""Time and memory before training starts, at corpus sizes up to WMT's: `mtkit train` from a fresh
run dir to its first update, then a resume on the existing cache to its first update.

For each --pairs N: a synthetic corpus (bench/make_corpus.py: median 12 words a side) is written
once into --work, and `mtkit train` runs on it with a joint unigram vocabulary of --vocab pieces
and the default model. The wall time to the first update (the first "train" event in
metrics.jsonl, log_every 1), and the peak memory of the process tree sampled every 0.1 s from
/proc: anonymous memory (RssAnon: what the process itself holds) and file-backed pages (RssFile:
memory-mapped Arrow files, which the kernel can drop), for the main process and for the largest
worker. Prints one table row and one JSON line per size.

usage: python bench/first_update.py --pairs 500000 4500000 --work /tmp/first-update [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def status_kb(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / RssShmem of one process, in kB (empty when it has ended)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (encoding workers and their children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        found += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return found


def update_logged(metrics: Path, since: float) -> bool:
    """Whether metrics.jsonl holds a "train" event written after `since` (log_every 1: an update)."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        if '"event": "train"' in line:
            try:
                e = json.loads(line)
            except ValueError:  # a line being written
                continue
            if e["time"] >= since:
                return True
    return False


def run_until_update(args: list[str], metrics: Path, log: Path) -> dict:
    """Start `mtkit train ARGS`, wait for the metrics event of its first update, stop it (SIGTERM: it
    saves last.pt); the time to that update and the memory peaks until then."""
    peaks = {"main_anon": 0, "main_file": 0, "worker_anon": 0, "worker_file": 0}
    t0, started = time.perf_counter(), time.time()
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "mtkit", "train", *args], cwd=ROOT, stderr=err,
                             stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        seconds = None
        while p.poll() is None:
            for pid, who in [(p.pid, "main"), *((c, "worker") for c in children(p.pid))]:
                s = status_kb(pid)
                peaks[f"{who}_anon"] = max(peaks[f"{who}_anon"], s.get("RssAnon", 0))
                peaks[f"{who}_file"] = max(peaks[f"{who}_file"], s.get("RssFile", 0) + s.get("RssShmem", 0))
            if update_logged(metrics, since=started):
                seconds = time.perf_counter() - t0
                p.terminate()
                p.wait()
                break
            time.sleep(0.1)
    if seconds is None:
        raise SystemExit(f"mtkit train ended without an update; see {log}")
    return {"seconds": round(seconds, 1), **{k: v // 1024 for k, v in peaks.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, nargs="+", required=True)
    p.add_argument("--work", type=Path, required=True, help="folder for corpora and run dirs")
    p.add_argument("--vocab", type=int, default=16000)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="another config override for mtkit train (repeatable)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{'pairs':>10} {'first s':>8} {'anon MB':>8} {'file MB':>8} {'worker anon':>11} {'resume s':>8}"
          f" {'anon MB':>8} {'file MB':>8}")
    for n in args.pairs:
        corpus = args.work / f"syn{n}"
        if not Path(f"{corpus}.en").exists():
            subprocess.run([sys.executable, str(ROOT / "bench/make_corpus.py"), "--pairs", str(n), "--out",
                            str(corpus)], check=True)
        run = args.work / f"run{n}"
        sets = [f"run_dir={run}", f"data.train.src={corpus}.de", f"data.train.tgt={corpus}.en", "data.valid=null",
                f"tokenizer.vocab_size={args.vocab}", "train.log_every=1", "train.max_steps=20", "train.max_time=null",
                *args.sets]
        overrides = [x for s in sets for x in ("--set", s)]
        config = [str(ROOT / "configs/base.yaml"), *overrides]
        first = run_until_update([*config, "--overwrite"], run / "metrics.jsonl", args.work / f"first{n}.log")
        resume = run_until_update(config, run / "metrics.jsonl", args.work / f"resume{n}.log")  # from its last.pt
        print(f"{n:>10,} {first['seconds']:>8} {first['main_anon']:>8,} {first['main_file']:>8,}"
              f" {first['worker_anon']:>11,} {resume['seconds']:>8} {resume['main_anon']:>8,} {resume['main_file']:>8,}")
        print(json.dumps({"pairs": n, "vocab": args.vocab, "first": first, "resume": resume}), flush=True)


if __name__ == "__main__":
    main()
