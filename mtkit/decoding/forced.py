"""Forced decoding: the log-probability a model gives each given translation (for `mtkit score`).

Scores line-aligned source and target sentences, for filtering noisy corpora and reranking (what
Marian's scorer, fairseq's --score-reference and CTranslate2's score_batch do). Each target is fed
to the decoder one piece per step through the incremental decoder search uses (encode,
start_cache, decode_step), so a pair's score is the log_prob search reports for that output, in
whatever decode.precision the model was prepared for. (int8 by fbgemm quantizes activations per
batch, so there a pair's score moves by ~1e-2 with its batch-mates, as search's log_probs do;
fp32, bf16 and int_mm are per row.) Pairs are batched by length as translate.py batches,
decode.workers batches at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtkit import files
from mtkit.config import DecodeConfig
from mtkit.data.padding import make_batch
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from mtkit.decoding.search_state import eval_mode
from mtkit.decoding.textio import CHUNK_LINES, check_text_file, read_chunks
from mtkit.decoding.translate import token_batches
from mtkit.decoding.workers import map_batches, workers_for
from mtkit.errors import DataError

log = logging.getLogger("mtkit")


@dataclass
class PairScore:
    """One pair's forced-decoding score.

    Attributes:
        pieces: the target's piece ids, EOS last.
        log_probs: each piece's log-probability given the source and the pieces before it.
    """

    pieces: list[int]
    log_probs: list[float]

    @property
    def log_prob(self) -> float:
        """The sum over the pieces, EOS included (search's Hypothesis.log_prob)."""
        return sum(self.log_probs)

    @property
    def per_piece(self) -> float:
        """The mean log-probability per piece, EOS counted (`--normalize`)."""
        return self.log_prob / len(self.log_probs)


def score_pairs(model: Any, tokenizer: Any, srcs: list[str], tgts: list[str], decode: DecodeConfig,
                device: str = "cpu", first_line_no: int = 1) -> list[PairScore | None]:
    """Each pair's PairScore, in input order; None for a pair with a blank source (nothing to score
    it from) or a side longer than decode.max_input_tokens (a warning names the line).

    Raises:
        ValueError: `srcs` and `tgts` differ in length (callers check line counts first).
    """
    if len(srcs) != len(tgts):
        raise ValueError(f"score_pairs: {len(srcs)} sources but {len(tgts)} targets")
    out: list[PairScore | None] = [None] * len(srcs)
    todo = [i for i, s in enumerate(srcs) if s.strip()]
    src_ids = tokenizer.encode_src([srcs[i].strip() for i in todo], decode.prefix) if todo else []
    tgt_ids = tokenizer.encode_tgt([tgts[i].strip() for i in todo]) if todo else []
    pairs: dict[int, tuple[list[int], list[int]]] = {}  # line index -> (source ids, target ids)
    for i, s, t in zip(todo, src_ids, tgt_ids):
        if max(len(s), len(t)) > decode.max_input_tokens:
            log.warning("line %d: %d source and %d target tokens; over decode.max_input_tokens=%d, not scored",
                        first_line_no + i, len(s), len(t), decode.max_input_tokens)
        else:
            pairs[i] = (s, t)
    # Longest side first: similar lengths share a batch (token_batches counts the longer side).
    longest = sorted(((i, max(s, t, key=len)) for i, (s, t) in pairs.items()), key=lambda item: -len(item[1]))

    score_ids = getattr(model, "score_ids", None)  # an exported model's engine (ct2.py) scores the ids itself

    def score_batch(batch: list[tuple[int, list[int]]]) -> list[list[float]]:
        if score_ids is not None:
            return score_ids([pairs[i][0] for i, _ in batch], [pairs[i][1] for i, _ in batch])
        src = make_batch([pairs[i][0] for i, _ in batch])["src"].to(device)
        return force(model, src, [pairs[i][1] for i, _ in batch])

    batches = list(token_batches(longest, decode.batch_tokens))
    with torch.inference_mode(), eval_mode(model):
        for batch, found in zip(batches, map_batches(score_batch, batches, workers_for(model, decode.workers, device))):
            for (i, _), log_probs in zip(batch, found):
                out[i] = PairScore(pairs[i][1] + [EOS_ID], log_probs)
    return out


@torch.inference_mode()
def force(model: Any, src: Tensor, targets: list[list[int]]) -> list[list[float]]:
    """Per-piece log-probabilities of each target (its pieces + EOS) given its source row.

    Args:
        model: has encode / start_cache / decode_step (model/transformer.py), in eval mode.
        src: (B, S) source ids, each row ending in EOS, right-padded.
        targets: B lists of target piece ids, without BOS and EOS.
    """
    B, device = src.size(0), src.device
    width = max(len(t) for t in targets) + 1  # + EOS
    tgt = torch.full((B, width), PAD_ID, dtype=torch.long, device=device)  # (B, T) pieces + EOS, padded
    for row, t in enumerate(targets):
        tgt[row, : len(t) + 1] = torch.tensor(t + [EOS_ID], dtype=torch.long)
    memory, src_pad_mask = model.encode(src)  # (B, S, D), (B, S)
    cache = model.start_cache(memory, src_pad_mask)
    tok = torch.full((B,), BOS_ID, dtype=torch.long, device=device)  # (B,) the piece fed at this step
    log_probs = torch.empty(B, width, device=device)  # (B, T)
    for step in range(width):
        # The same fp32 log-softmax search takes (search_state.TokenMasks): the scores are its log_probs.
        lprobs = F.log_softmax(model.decode_step(tok, cache).float(), dim=-1)  # (B, V)
        log_probs[:, step] = lprobs.gather(1, tgt[:, step: step + 1]).squeeze(1)
        tok = tgt[:, step]  # past a row's EOS it feeds PAD, whose outputs are never read
    return [row[: len(t) + 1] for row, t in zip(log_probs.tolist(), targets)]


def score_file(model: Any, tokenizer: Any, decode: DecodeConfig, src_path: Path, tgt_path: Path,
               output: Path | None, *, normalize: bool = False, as_json: bool = False, device: str = "cpu",
               chunk_lines: int = CHUNK_LINES) -> int:
    """Score line-aligned files chunk by chunk into `output` (or stdout); returns the pairs read.

    One line per pair, in order: the sum of the target pieces' log-probabilities, EOS included
    (`normalize`: per piece), or an empty line where score_pairs gives none; `as_json`: one object
    per line with the pieces and their log-probabilities. The output takes its name only when
    complete (files.replacing), so files of different lengths leave nothing behind.
    """
    check_text_file(src_path, "source")
    check_text_file(tgt_path, "target")
    pieces = tokenizer.pieces("tgt")
    with contextlib.ExitStack() as stack:
        src_chunks = read_chunks(stack.enter_context(open(src_path, "rb")), f"source {src_path}", chunk_lines)
        tgt_chunks = read_chunks(stack.enter_context(open(tgt_path, "rb")), f"target {tgt_path}", chunk_lines)
        out = stack.enter_context(files.replacing(output, text=True)) if output else sys.stdout
        pairs = 0
        for src_chunk, tgt_chunk in itertools.zip_longest(src_chunks, tgt_chunks, fillvalue=(0, [])):
            (first, srcs), (_, tgts) = src_chunk if src_chunk[1] else (tgt_chunk[0], []), tgt_chunk
            if len(srcs) != len(tgts):
                line, longer = first + min(len(srcs), len(tgts)), (src_path if len(srcs) > len(tgts) else tgt_path)
                raise DataError(f"source {src_path} and target {tgt_path} have different numbers of lines: line"
                                f" {line} is only in {longer}; give line-aligned files")
            scores = score_pairs(model, tokenizer, srcs, tgts, decode, device, first_line_no=first)
            out.write("".join(_format(s, pieces, normalize, as_json) + "\n" for s in scores))
            out.flush()
            pairs += len(srcs)
    return pairs


def _format(s: PairScore | None, pieces: list[str], normalize: bool, as_json: bool) -> str:
    value = None if s is None else (s.per_piece if normalize else s.log_prob)
    if not as_json:
        return "" if value is None else f"{value:.6f}"
    if s is None:
        return json.dumps({"score": None})
    return json.dumps({"score": round(value, 6), "pieces": [pieces[i] for i in s.pieces],
                       "log_probs": [round(x, 6) for x in s.log_probs]}, ensure_ascii=False)
