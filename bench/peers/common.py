"""Shared parts of the peer benchmark scripts (opennmt.py, joey.py, ct2.py): run with mtkit's venv.

Not a command. Paths, the child process environment, logged subprocesses, the training and
translation arguments every peer takes, the throughput summary, and the translation report
(SentencePiece detokenization, mtkit's own sacreBLEU scoring, settings, table and one JSON line).
The code that runs inside the peers' venvs is in drivers/ (its own directory, so that a driver's
`import onmt` or `import joeynmt` can never pick up a file of this directory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "bench" / ".cache" / "peers"
DRIVERS = Path(__file__).resolve().parent / "drivers"
DATA = PEERS / "data"
sys.path.insert(0, str(ROOT))


def venv_bin(venv: str, exe: str) -> str:
    path = PEERS / venv / "bin" / exe
    if not path.exists():
        sys.exit(f"error: {path} not found; run bash bench/peers/install.sh first")
    return str(path)


def child_env(threads: int) -> dict:
    """The environment of every peer process: `threads` intra-op threads, unbuffered output."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU only, even where a GPU is present
    return env


def run_logged(cmd: list[str], log: Path | None, env: dict) -> tuple[int, float]:
    """Run `cmd` (stdout and stderr to `log`, or inherited); return (exit code, wall seconds).
    Ctrl-C is passed on to the child, which then saves and stops as it would alone."""
    print("$ " + " ".join(cmd) + (f"  > {log}" if log else ""), flush=True)
    t0 = time.monotonic()
    out = open(log, "w", encoding="utf-8") if log else None
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=env, cwd=ROOT)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait()
    finally:
        if out:
            out.close()
    return rc, time.monotonic() - t0


def children_peak_rss_mb() -> int:
    """Peak RSS of the largest child process waited for so far (one toolkit run per script)."""
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def run_captured(cmd: list[str], echo: bool = False) -> str:
    """Run a benchmark command (from the repository root) and return its stdout; on failure, exit
    with its exit code and the end of its output. echo: also print its lines other than JSON."""
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"error: exit code {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    if echo:
        print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("{")), flush=True)
    return proc.stdout


def last_json(text: str) -> dict:
    """The last JSON line a benchmark command printed (every one ends with its figures)."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        sys.exit(f"error: no JSON result in the output:\n{text[-3000:]}")
    return json.loads(lines[-1])


def tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])


def add_train_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", required=True, type=Path, help="run directory (config, log, checkpoints)")
    ap.add_argument("--data", type=Path, default=DATA, help="prepare.py's output")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget of the training loop")
    ap.add_argument("--steps", type=int, default=None, help="number of updates")
    ap.add_argument("--warmup", type=int, required=True, help="warmup updates W")
    ap.add_argument("--lr", type=float, required=True, help="peak learning rate P, reached at update W")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--dropout", type=float, default=0.1, help="P_drop (configs/ding-de-en.yaml: 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--valid-steps", type=int, default=400, help="validate (and save) every N updates; 0 = never")
    ap.add_argument("--report-every", type=int, default=50, help="training log line every N updates")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--src", default="de")
    ap.add_argument("--tgt", default="en")
    ap.add_argument("--train-prefix", default="train", help="training files PREFIX.{src,tgt} in --data")
    ap.add_argument("--skip", type=int, default=2, help="throughput: report intervals left out as warm-up")


def check_train_args(args) -> None:
    if args.minutes is None and args.steps is None:
        sys.exit("error: give --minutes M (wall-clock budget) and/or --steps N")
    for name in (f"{args.train_prefix}.{args.src}", f"{args.train_prefix}.{args.tgt}", f"valid.{args.src}", "vocab.onmt"):
        if not (args.data / name).exists():
            sys.exit(f"error: {args.data / name} not found; run bench/peers/prepare.py first")


def write_config(out: Path, cfg: dict) -> Path:
    """Create `out` and write the toolkit's YAML config there as config.yaml; returns its path."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


def throughput_summary(toolkit: str, what: str, rows: list[dict], skip: int, extra: dict) -> dict:
    """rows: one dict per report interval with 'step' and 'tgt_tok_s'. Prints and returns the summary
    (with the counted intervals' tok/s as "tgt_tok_s")."""
    used = rows[skip:] if len(rows) > skip else rows
    values = [r["tgt_tok_s"] for r in used]
    out = {"bench": "peer_train_speed", "toolkit": toolkit, "counts": what, "intervals": len(rows),
           "skipped": len(rows) - len(used), "tgt_tok_s": values, **extra}
    if values:
        out.update(median_tgt_tok_s=round(statistics.median(values)), min_tgt_tok_s=round(min(values)),
                   max_tgt_tok_s=round(max(values)), last_step=rows[-1]["step"])
    print(f"{toolkit} training throughput ({what}):")
    print(f"  {'step':>7} {'tgt tok/s':>10}" + ("  (src tok/s)" if rows and "src_tok_s" in rows[0] else ""))
    for i, r in enumerate(rows):
        mark = "  warm-up, not counted" if i < len(rows) - len(used) else ""
        print(f"  {r['step']:>7} {r['tgt_tok_s']:>10.0f}" + (f"  ({r['src_tok_s']:.0f})" if "src_tok_s" in r else "") + mark)
    if values:
        print(f"  median over {len(values)} intervals: {out['median_tgt_tok_s']:,} target tok/s"
              f" (min {out['min_tgt_tok_s']:,}, max {out['max_tgt_tok_s']:,})")
    else:
        print("  no report intervals in the log")
    print(json.dumps(out))
    return out


def add_translate_args(ap: argparse.ArgumentParser, model_help: str) -> None:
    ap.add_argument("--model", required=True, type=Path, help=model_help)
    ap.add_argument("--src", type=Path, default=DATA / "test.de", help="source piece file (prepare.py output)")
    ap.add_argument("--ref", type=Path, default=None, help="raw reference text, e.g. data/ding-de-en/test.en")
    ap.add_argument("--spm", required=True, type=Path, help="the SentencePiece model, to detokenize")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--batch-sents", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    ap.add_argument("--warmup-sents", type=int, default=64, help="untimed warm-up on the first N sentences")
    ap.add_argument("--out", required=True, type=Path, help="detokenized hypotheses (pieces go to OUT.pieces)")


def run_driver(cmd: list[str], env: dict, result: Path) -> dict:
    """Run a translation driver; returns its JSON result plus the child's peak RSS."""
    result.unlink(missing_ok=True)
    rc, wall = run_logged(cmd, None, env)
    if rc != 0 or not result.exists():
        sys.exit(f"error: the driver failed (exit code {rc})")
    res = json.loads(result.read_text())
    res["child_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    res["process_wall_s"] = round(wall, 2)
    return res


def report_translation(toolkit: str, settings: dict, res: dict, args) -> dict:
    """Detokenize the driver's piece output, count, score and print settings, table and JSON."""
    import sentencepiece as spm

    from mtkit.decoding.scoring import score
    from mtkit.decoding.textio import read_text_lines

    pieces_path = Path(res["pieces"])
    hyp_pieces = [line.split() for line in pieces_path.read_text(encoding="utf-8").split("\n")[:-1]]
    n = res["sentences"]
    if len(hyp_pieces) != n:
        sys.exit(f"error: {pieces_path} has {len(hyp_pieces)} lines for {n} sentences")
    sp = spm.SentencePieceProcessor(model_file=str(args.spm))
    hyps = [sp.decode_pieces(p) for p in hyp_pieces]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    tgt_tokens = sum(len(p) + 1 for p in hyp_pieces)  # output pieces + EOS, as bench/decode_speed.py
    secs = res["seconds"]
    row = {"beam": args.beam, "seconds": round(secs, 2), "sentences_per_s": round(n / secs, 1),
           "tgt_tokens_per_s": round(tgt_tokens / secs, 1), "tgt_tokens": tgt_tokens,
           "peak_rss_mb": res["child_peak_rss_mb"], "rss_after_load_mb": res.get("rss_after_load_mb"),
           "load_seconds": res.get("load_seconds")}
    if res.get("max_length"):
        row["hit_max_length"] = sum(1 for p in hyp_pieces if len(p) >= res["max_length"])
    scores = None
    if args.ref is not None:
        refs = read_text_lines(args.ref, "references")[:n]
        scores = score(hyps, refs, metrics=("bleu", "chrf"))
        row.update(bleu=round(scores["bleu"], 2), chrf=round(scores["chrf"], 2))
    print(f"{toolkit}: " + "; ".join(f"{k} {v}" for k, v in settings.items()))
    print(f"  {n} sentences from {args.src}; hypotheses {args.out} (pieces {pieces_path}); model load excluded,"
          f" {args.warmup_sents} sentences of untimed warm-up")
    print(f"  {'beam':>4} {'seconds':>8} {'sent/s':>8} {'tok/s':>9} {'peak RSS':>9}" + (f" {'BLEU':>6} {'chrF':>6}" if scores else ""))
    print(f"  {row['beam']:>4} {row['seconds']:>8.2f} {row['sentences_per_s']:>8.1f} {row['tgt_tokens_per_s']:>9.1f}"
          f" {row['peak_rss_mb']:>6} MB" + (f" {row['bleu']:>6.2f} {row['chrf']:>6.2f}" if scores else ""))
    print(f"  peak RSS of the whole child process {row['peak_rss_mb']} MB (after loading the model:"
          f" {row['rss_after_load_mb']} MB); model load {row['load_seconds']} s"
          + (f"; hypotheses at the length limit ({res['max_length']}): {row['hit_max_length']}" if "hit_max_length" in row else ""))
    if scores:
        print(f"  BLEU {scores['signature']['bleu']}\n  chrF {scores['signature']['chrf']}")
    out = {"bench": "peer_decode_speed", "toolkit": toolkit, **settings, "sentences": n, "src": str(args.src),
           "results": [row], **({"signatures": scores["signature"]} if scores else {})}
    print(json.dumps(out))
    return out


def driver_translate_args(args, result: Path) -> list[str]:
    """The arguments every translation driver takes."""
    out = ["--src", str(args.src), "--beam", str(args.beam), "--batch-sents", str(args.batch_sents),
           "--threads", str(args.threads), "--warmup-sents", str(args.warmup_sents),
           "--pieces", str(args.out) + ".pieces", "--result", str(result)]
    return out + (["--limit", str(args.limit)] if args.limit else [])


def toolkit_cli(doc: str, train, throughput, translate, model_help: str, train_extra=None, translate_extra=None) -> None:
    """The command line of opennmt.py and joey.py: train, throughput and translate sub-commands."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tp = sub.add_parser("train", help="write the config and train")
    add_train_args(tp)
    if train_extra:
        train_extra(tp)
    t = sub.add_parser("throughput", help="target tokens/s from a run's train.log")
    t.add_argument("run_dir", type=Path)
    t.add_argument("--skip", type=int, default=2)
    tr = sub.add_parser("translate", help="time translating a piece file (model load excluded)")
    add_translate_args(tr, model_help)
    if translate_extra:
        translate_extra(tr)
    args = ap.parse_args()
    if args.cmd == "train":
        train(args)
    elif args.cmd == "throughput":
        throughput(args.run_dir, args.skip)
    else:
        translate(args)


def finish_training(args, rc: int, wall: float, checkpoint: Path | None, throughput, extra: dict) -> None:
    """After a peer's training command: its log's tail, exit code, last checkpoint, peak RSS and
    throughput summary; exits with the toolkit's exit code if it failed."""
    print(tail(args.out / "train.log", 6))
    print(f"exit code {rc}, {wall:.0f} s; last checkpoint: {checkpoint or 'none'}")
    print(f"peak RSS of the training process: {children_peak_rss_mb()} MB")
    throughput(args.out, args.skip, extra={"exit_code": rc, "wall_s": round(wall), "peak_rss_mb": children_peak_rss_mb(),
                                           "last_checkpoint": str(checkpoint) if checkpoint else None, **extra})
    if rc != 0:
        sys.exit(rc)
