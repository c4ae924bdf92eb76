"""Piece files and vocabularies for the peer toolkits, from mtkit's SentencePiece model.

usage: python bench/peers/prepare.py --spm runs/ding-de-en/tokenizer/spm.model
           [--data data/ding-de-en] [--out bench/.cache/peers/data] [--src de --tgt en]
           [--max-len 128 --max-len-ratio 3.0] [--upsample-min-len 10 --upsample-factor 5] [--threads 1]

Every toolkit trains on the same SentencePiece pieces: each line of {train,dev,test}.{src,tgt} is
encoded with the given model (the same call as mtkit: sp.encode, no sampling) and written as
space-separated pieces. Writes into --out:

  train.{de,en}   training pairs, filtered as mtkit filters them (data.max_len / max_len_ratio,
                  counted in pieces without BOS/EOS): pairs with an empty side, a side over
                  --max-len pieces, or longer/shorter > --max-len-ratio are dropped. With
                  --upsample-min-len N --upsample-factor F, pairs whose source has >= N pieces are
                  written F times and the file is shuffled (seed 1), as mtkit's data.upsample_*.
                  Off by default. (OpenNMT-py drops a repeated source within one batch, and its
                  length-sorted buckets put the copies side by side, so it undoes most of this.)
  dev.*, test.*   all lines, unfiltered (BLEU is computed on every line)
  valid.*         the first 500 dev lines: what the peers validate on (mtkit's valid_max_sentences)
  vocab.onmt      OpenNMT-py vocabulary ("piece<TAB>count"; the same joint file for src and tgt)
  vocab.joey      JoeyNMT vocabulary (one piece per line; the same joint file for src and trg)
  prepare.json    the settings and counts; a second run with the same settings and inputs skips

Both vocabularies hold every non-special piece of the SentencePiece model (by training count,
then model order; unseen pieces with count 0), so with the toolkits' own 4 specials (<unk>, <s>,
</s> and <blank>/<pad>) the joint vocabulary has exactly the model's size, as mtkit's.
A piece that contains a whitespace or line-break character (none in Ding's model) would break the
toolkits' line and token splitting; such pieces are written as <unk> and counted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

UNK = "<unk>"


def file_id(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime": int(st.st_mtime)}


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def write_lines(path: Path, lines) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def encode(sp, lines: list[str], threads: int, bad: Counter) -> list[list[str]]:
    out = sp.encode(lines, out_type=str, num_threads=threads)
    for pieces in out:
        for i, p in enumerate(pieces):
            if any(c.isspace() for c in p):
                bad[p] += 1
                pieces[i] = UNK
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spm", required=True, type=Path, help="SentencePiece model (mtkit's RUN_DIR/tokenizer/spm.model)")
    ap.add_argument("--data", type=Path, default=Path("data/ding-de-en"))
    ap.add_argument("--out", type=Path, default=Path("bench/.cache/peers/data"))
    ap.add_argument("--src", default="de")
    ap.add_argument("--tgt", default="en")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--max-len-ratio", type=float, default=3.0)
    ap.add_argument("--valid-lines", type=int, default=500)
    ap.add_argument("--upsample-min-len", type=int, default=None)
    ap.add_argument("--upsample-factor", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="SentencePiece encoding threads")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args()

    import sentencepiece as spm

    splits = ("train", "dev", "test")
    inputs = {f"{s}.{lang}": args.data / f"{s}.{lang}" for s in splits for lang in (args.src, args.tgt)}
    for path in [args.spm, *inputs.values()]:
        if not path.exists():
            sys.exit(f"error: {path} not found")
    settings = {"spm": file_id(args.spm), "spm_md5": hashlib.md5(args.spm.read_bytes()).hexdigest(),
                "inputs": {k: file_id(v) for k, v in inputs.items()}, "src": args.src, "tgt": args.tgt,
                "max_len": args.max_len, "max_len_ratio": args.max_len_ratio, "valid_lines": args.valid_lines,
                "upsample_min_len": args.upsample_min_len, "upsample_factor": args.upsample_factor}
    outputs = [f"{s}.{lang}" for s in (*splits, "valid") for lang in (args.src, args.tgt)] + ["vocab.onmt", "vocab.joey"]
    stamp = args.out / "prepare.json"
    if not args.force and stamp.exists() and all((args.out / name).exists() for name in outputs):
        old = json.loads(stamp.read_text())
        if old.get("settings") == settings:
            print(f"prepare: {args.out} is up to date ({stamp}); --force rebuilds")
            print(json.dumps({"bench": "peers_prepare", "up_to_date": True, **old["counts"]}))
            return

    t0 = time.perf_counter()
    sp = spm.SentencePieceProcessor(model_file=str(args.spm))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"prepare: {args.data} -> {args.out} with {args.spm} ({sp.get_piece_size()} pieces);"
          f" train filter max_len {args.max_len}, max_len_ratio {args.max_len_ratio};"
          f" upsample {args.upsample_min_len} x{args.upsample_factor}; {args.threads} thread(s)")
    bad: Counter = Counter()
    pieces = {k: encode(sp, read_lines(v), args.threads, bad) for k, v in inputs.items()}
    counts: dict = {}
    for s in splits:
        a, b = pieces[f"{s}.{args.src}"], pieces[f"{s}.{args.tgt}"]
        if len(a) != len(b):
            sys.exit(f"error: {s}: {len(a)} {args.src} lines but {len(b)} {args.tgt} lines")
        counts[f"{s}_lines"] = len(a)
        if s != "train":
            empty = sum(1 for x, y in zip(a, b) if not x or not y)
            if empty:  # JoeyNMT silently drops empty lines (and then misaligns): say so
                print(f"warning: {s} has {empty} lines with an empty side; JoeyNMT cannot read such files")

    # Training filter, in mtkit's order of reasons (data._drop_counts).
    src, tgt = pieces[f"train.{args.src}"], pieces[f"train.{args.tgt}"]
    drop = Counter()
    kept = []
    for x, y in zip(src, tgt):
        n, m = len(x), len(y)
        if n == 0 or m == 0:
            drop["empty"] += 1
        elif n > args.max_len or m > args.max_len:
            drop["too_long"] += 1
        elif max(n, m) > args.max_len_ratio * min(n, m):
            drop["bad_ratio"] += 1
        else:
            kept.append((x, y))
    counts.update(train_kept=len(kept), train_dropped=dict(drop))
    if args.upsample_min_len is not None and args.upsample_factor > 1:
        long = [p for p in kept if len(p[0]) >= args.upsample_min_len]
        kept = kept + long * (args.upsample_factor - 1)
        random.Random(1).shuffle(kept)
        counts.update(upsampled_pairs=len(long), train_rows=len(kept))
    write_lines(args.out / f"train.{args.src}", (" ".join(x) for x, _ in kept))
    write_lines(args.out / f"train.{args.tgt}", (" ".join(y) for _, y in kept))
    for s in ("dev", "test"):
        for lang in (args.src, args.tgt):
            write_lines(args.out / f"{s}.{lang}", (" ".join(p) for p in pieces[f"{s}.{lang}"]))
    for lang in (args.src, args.tgt):
        write_lines(args.out / f"valid.{lang}", (" ".join(p) for p in pieces[f"dev.{lang}"][: args.valid_lines]))

    # Joint vocabulary: every non-special model piece, most frequent (in train, both sides) first.
    freq = Counter(p for x, y in kept for p in (*x, *y))
    model_pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
                    if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))]
    model_pieces = [p for p in model_pieces if not any(c.isspace() for c in p)]
    order = {p: i for i, p in enumerate(model_pieces)}
    vocab = sorted(model_pieces, key=lambda p: (-freq[p], order[p]))
    write_lines(args.out / "vocab.onmt", (f"{p}\t{freq[p]}" for p in vocab))
    write_lines(args.out / "vocab.joey", vocab)
    oov = sum(c for p, c in freq.items() if p not in order and p != UNK)
    counts.update(vocab_pieces=len(vocab), vocab_with_4_specials=len(vocab) + 4,
                  train_tokens_src=sum(len(x) for x, _ in kept), train_tokens_tgt=sum(len(y) for _, y in kept),
                  train_tokens_not_in_model=oov, pieces_with_whitespace=sum(bad.values()))
    stamp.write_text(json.dumps({"settings": settings, "counts": counts}, indent=1) + "\n")

    print(f"  train: {counts['train_lines']:,} pairs, kept {counts['train_kept']:,}, dropped {dict(drop)}"
          + (f"; {counts['upsampled_pairs']:,} long pairs x{args.upsample_factor} -> {counts['train_rows']:,} rows"
             if "upsampled_pairs" in counts else ""))
    print(f"  dev {counts['dev_lines']:,} (valid: first {args.valid_lines}), test {counts['test_lines']:,} lines")
    print(f"  vocab: {len(vocab):,} pieces + 4 specials = {len(vocab) + 4:,};"
          f" train tokens src {counts['train_tokens_src']:,} tgt {counts['train_tokens_tgt']:,};"
          f" pieces outside the model {oov}; pieces with whitespace -> <unk>: {sum(bad.values())}")
    print(f"  {time.perf_counter() - t0:.1f} s")
    print(json.dumps({"bench": "peers_prepare", "up_to_date": False, "out": str(args.out), **counts}))


if __name__ == "__main__":
    main()
