"""Translate lines and whole files: one output line per input line, in input order, always.

Lines are sorted by length into token-budget batches for speed (decoded `decode.workers` at a
time on a CPU, workers.py) and put back in order; files are read in chunks (textio.py) so memory
stays flat, and written through files.replacing, so a killed job never leaves a partial file that
looks complete. Search itself is in search.py (sampling instead: sampling.py); what model and
settings to decode with, loading.py.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mtkit import files
from mtkit.config import DecodeConfig
from mtkit.data.padding import make_batch
from mtkit.decoding.sampling import line_seed, sample_search
from mtkit.decoding.search import search
from mtkit.decoding.search_state import eval_mode
from mtkit.decoding.textio import (
    CHUNK_LINES,
    arrives_over_time,
    check_text_file,
    count_lines,
    read_as_available,
    read_chunks,
)
from mtkit.decoding.workers import map_batches, workers_for
from mtkit.errors import ConfigError

log = logging.getLogger("mtkit")


@dataclass
class Translation:
    text: str
    score: float


def translate_lines(model, tokenizer, lines: list[str], decode: DecodeConfig, device: str = "cpu",
                    first_line_no: int = 1) -> list[list[Translation]]:
    """Translate a list of sentences; returns exactly `decode.nbest` translations per line, best first
    (with decode.sample: nbest independent samples, in sample order; sampling.py).

    Empty or whitespace-only lines give empty translations (score 0) without touching the model. Lines whose
    source is longer than `decode.max_input_tokens` give an empty translation and a warning naming
    the line (`first_line_no` is the number of lines[0] in its file). Training's validation calls
    this same function, so dev BLEU during training equals `mtkit evaluate`'s.
    """
    out: list[list[Translation]] = [[Translation("", 0.0)] * decode.nbest for _ in lines]
    search_ids = getattr(model, "search_ids", None)  # an exported model's engine (ct2.py) takes the ids itself
    if decode.sample and search_ids is not None:
        raise ConfigError("decode.sample: sampling runs on mtkit's own engine; drop --engine ctranslate2")
    # Rows to decode, keyed (line, sample): with decode.sample each of a line's nbest samples is a row.
    # Longest first: similar lengths share a batch (little padding), and a batch that does not fit
    # in memory shows up at once rather than at the end of a long job.
    rows = [((i, j), src) for i, src in _within_limit(tokenizer, lines, decode, first_line_no)
            for j in range(decode.nbest if decode.sample else 1)]
    rows.sort(key=lambda item: -len(item[1]))

    def find(batch: list[tuple[tuple[int, int], list[int]]]) -> list:
        if search_ids is not None:
            return search_ids([s for _, s in batch], decode)
        src = make_batch([s for _, s in batch])["src"].to(device)
        if decode.sample:
            seeds = [line_seed(decode.seed, lines[i].strip(), j) for (i, j), _ in batch]
            return [[h] for h in sample_search(model, src, seeds, decode)]
        return search(model, src, decode)

    # decode.batch_tokens counts the rows decoded: beam_size per sentence for beam search.
    batches = list(token_batches(rows, max(1, decode.batch_tokens // (1 if decode.sample else decode.beam_size))))
    # Eval mode once for all workers (search's own switch would race between threads).
    with torch.inference_mode(), eval_mode(model):
        for batch, found in zip(batches, map_batches(find, batches, workers_for(model, decode.workers, device))):
            for ((i, j), _), hyps in zip(batch, found):
                texts = tokenizer.decode_tgt([h.tokens for h in hyps])
                got = [Translation(t, h.score) for t, h in zip(texts, hyps)]
                if decode.sample:
                    out[i][j] = got[0]
                else:  # exactly nbest per line: a search that found fewer distinct outputs with a
                    # non-zero probability (e.g. an output limit of 0) pads with empty ones scored -inf
                    out[i] = got + [Translation("", float("-inf"))] * (decode.nbest - len(got))
    return out


def _within_limit(tokenizer, lines: list[str], decode: DecodeConfig, first_line_no: int) -> list[tuple[int, list[int]]]:
    """(index, source ids, decode.prefix's tag first) of the non-blank lines of at most
    decode.max_input_tokens pieces; a warning names each longer one (its output stays empty)."""
    max_tokens = decode.max_input_tokens
    todo = [i for i, line in enumerate(lines) if line.strip()]
    keep = []
    for i, src in zip(todo, tokenizer.encode_src([lines[i].strip() for i in todo], decode.prefix) if todo else []):
        if len(src) > max_tokens:
            log.warning("line %d: %d source tokens exceed decode.max_input_tokens=%d; output left empty",
                        first_line_no + i, len(src), max_tokens)
        else:
            keep.append((i, src))
    return keep


def token_batches(items: list[tuple[int, list[int]]], batch_tokens: int) -> Iterator[list[tuple[int, list[int]]]]:
    """Cut length-sorted (index, ids) items into batches of at most `batch_tokens` padded source tokens."""
    batch: list[tuple[int, list[int]]] = []
    longest = 0
    for item in items:
        n = len(item[1]) + 1  # + EOS
        if batch and max(longest, n) * (len(batch) + 1) > batch_tokens:
            yield batch
            batch, longest = [], 0
        batch.append(item)
        longest = max(longest, n)
    if batch:
        yield batch


def format_output(translations: list[list[Translation]], first_index: int, nbest: int) -> str:
    """One line per input; with nbest > 1, `index ||| hypothesis ||| score` lines (index 0-based)."""
    if nbest == 1:
        return "".join(ts[0].text + "\n" for ts in translations)
    return "".join(f"{first_index + k} ||| {t.text} ||| {t.score:.4f}\n"
                   for k, ts in enumerate(translations) for t in ts)


def translate_file(model, tokenizer, decode: DecodeConfig, input_path: Path | None, output_path: Path | None,
                   device: str = "cpu", progress: bool | None = None,
                   chunk_lines: int = CHUNK_LINES) -> dict[str, Any]:
    """Translate a file (or stdin) into a file (or stdout), chunk by chunk.

    Output to a file takes its name only when complete (files.replacing), so an interrupted job
    never leaves a truncated file under the final name, nor a temporary one beside it.
    """
    name = str(input_path) if input_path else "<stdin>"
    if input_path is not None:
        check_text_file(input_path, "input")
    show_bar = progress if progress is not None else (output_path is not None and sys.stderr.isatty())
    total = count_lines(input_path) if show_bar and input_path else None
    with contextlib.ExitStack() as stack:
        instream = stack.enter_context(open(input_path, "rb")) if input_path else sys.stdin.buffer
        out = stack.enter_context(files.replacing(output_path, text=True)) if output_path else sys.stdout
        bar = stack.enter_context(tqdm(total=total, unit="line", file=sys.stderr, dynamic_ncols=True)) if show_bar else None
        # A terminal or a pipe may send a line and wait for its translation: translate what has
        # arrived so far and flush; files (and redirected files) are read in large chunks.
        interactive = input_path is None and arrives_over_time(instream)
        chunks = (read_as_available if interactive else read_chunks)(instream, name, chunk_lines)
        lines_done = 0
        for first, chunk in chunks:
            translations = translate_lines(model, tokenizer, chunk, decode, device, first_line_no=first)
            out.write(format_output(translations, first - 1, decode.nbest))
            out.flush()
            lines_done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return {"lines": lines_done}
