"""Translate lines and whole files: one output line per input line, in input order, always.

Lines are sorted by length into token-budget batches for speed and put back in order; files are
read in chunks so memory stays flat, and written to a temporary file renamed at the end, so a
killed job never leaves a partial file that looks complete. Search itself is in search.py.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from mtkit.config import DecodeConfig
from mtkit.errors import DataError

log = logging.getLogger("mtkit")

CHUNK_LINES = 20_000  # lines read, translated and written at a time: bounds memory for huge files


@dataclass
class Translation:
    text: str
    score: float


def load_model(model_path: str | Path, device: str = "cpu"):
    """(model in eval mode, tokenizer, config) from a checkpoint file or run dir."""
    from mtkit.checkpoint import load_checkpoint, resolve_model_path
    from mtkit.config import from_plain_dict
    from mtkit.errors import CheckpointError
    from mtkit.model import Transformer
    from mtkit.tokenizer import PAD_ID, Tokenizer

    path = resolve_model_path(model_path)
    state = load_checkpoint(path)
    cfg = from_plain_dict(state["config"])
    tok = Tokenizer.from_bytes(state["tokenizer"])
    model = Transformer(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, pad_id=PAD_ID)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {str(e)[:200]}") from None
    model.to(device).eval()
    log.info("loaded %s (step %s)", path, state.get("step", "?"))
    return model, tok, cfg


def load_for_decoding(model_path: str | Path, device: str = "auto", overrides: list[str] | tuple[str, ...] = (),
                      beam: int | None = None, greedy: bool = False, nbest: int | None = None,
                      batch_tokens: int | None = None, engine: str = "torch"):
    """What `mtkit translate` and `mtkit evaluate` decode with: (model, tokenizer, decode settings,
    device). The checkpoint's decode.* settings, then `--set decode.*=...` overrides, then the flags;
    the weights cast for decode.precision (auto resolved, so the settings name what runs).
    engine "ctranslate2": the model is an exported directory (or a checkpoint, exported on the fly)
    and CTranslate2 searches (ct2.py)."""
    from dataclasses import replace

    from mtkit import ct2
    from mtkit.errors import ConfigError
    from mtkit.hardware import resolve_device
    from mtkit.memory import keep_freed_memory

    flags = dict(beam=beam, greedy=greedy, nbest=nbest, batch_tokens=batch_tokens)
    if engine == "ctranslate2":
        return ct2.load_engine(model_path, device, overrides, **flags)
    if engine != "torch":
        raise ConfigError(f"--engine: expected torch or ctranslate2 (got {engine!r})")
    if ct2.is_ct2_dir(model_path):
        raise ConfigError(f"{model_path}: is a CTranslate2 export; translate it with --engine ctranslate2")
    keep_freed_memory()
    device = resolve_device(device)
    if device.startswith("cuda"):
        import torch

        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as training (and its validation) ran
    model, tok, cfg = load_model(model_path, device)
    decode = decode_settings(decode_overrides(cfg, overrides).decode, **flags)
    model, precision = cast_for_decoding(model, decode.precision, device)
    return model, tok, replace(decode, precision=precision), device


def cast_for_decoding(model, precision: str, device: str = "cpu"):
    """decode.precision resolved for `device` (auto: hardware.resolve_decode_precision, logged) and
    the model prepared for it (prepare_for_decoding). Returns (model, precision run)."""
    from mtkit.hardware import resolve_decode_precision

    precision, why = resolve_decode_precision(precision, device)
    log.info("%s", why)
    return prepare_for_decoding(model, precision), precision


def prepare_for_decoding(model, precision: str):
    """A loaded model made ready to decode in `precision` (fp32, bf16 or int8; resolved, not auto).

    The projections are fused (model.fuse_for_decoding) whatever the precision. bf16 turns the
    weights to bf16, so the matmuls run on the CPU's bf16 units (or a GPU's tensor cores); int8
    runs every Linear in 8-bit integers (quantize.py, CPUs only). Search keeps its log-softmax and
    scores in fp32 throughout. The model must not be trained afterwards.
    """
    import torch

    model.fuse_for_decoding()
    if precision == "int8":
        from mtkit.quantize import quantize_linears

        return quantize_linears(model)
    return model.to(torch.bfloat16) if precision == "bf16" else model


def translate_lines(model, tokenizer, lines: list[str], decode: DecodeConfig, device: str = "cpu",
                    first_line_no: int = 1) -> list[list[Translation]]:
    """Translate a list of sentences; returns exactly `decode.nbest` translations per line, best first.

    Empty or whitespace-only lines give empty translations (score 0) without touching the model. Lines whose
    source is longer than `decode.max_input_tokens` give an empty translation and a warning naming
    the line (`first_line_no` is the number of lines[0] in its file). Training's validation calls
    this same function, so dev BLEU during training equals `mtkit evaluate`'s.
    """
    import torch

    from mtkit.data import make_batch
    from mtkit.search import search

    out: list[list[Translation]] = [[Translation("", 0.0)] * decode.nbest for _ in lines]
    todo = [i for i, line in enumerate(lines) if line.strip()]
    ids = tokenizer.encode_src([lines[i].strip() for i in todo]) if todo else []
    keep = []
    for i, src in zip(todo, ids):
        if len(src) > decode.max_input_tokens:
            log.warning("line %d: %d source tokens exceed decode.max_input_tokens=%d; output left empty",
                        first_line_no + i, len(src), decode.max_input_tokens)
        else:
            keep.append((i, src))
    # Longest first: similar lengths share a batch (little padding), and a batch that does not fit
    # in memory shows up at once rather than at the end of a long job.
    keep.sort(key=lambda item: -len(item[1]))
    search_ids = getattr(model, "search_ids", None)  # an exported model's engine (ct2.py) takes the ids itself
    with torch.inference_mode():
        # decode.batch_tokens counts the rows beam search decodes: beam_size per sentence.
        for batch in token_batches(keep, max(1, decode.batch_tokens // decode.beam_size)):
            if search_ids is not None:
                found = search_ids([s for _, s in batch], decode)
            else:
                found = search(model, make_batch([s for _, s in batch])["src"].to(device), decode)
            for (i, _), hyps in zip(batch, found):
                texts = tokenizer.decode_tgt([h.tokens for h in hyps])
                out[i] = [Translation(t, h.score) for t, h in zip(texts, hyps)]
                # Exactly nbest per line: a search that found fewer distinct outputs with a non-zero
                # probability (e.g. an output limit of 0) pads with empty ones scored -inf.
                out[i] += [Translation("", float("-inf"))] * (decode.nbest - len(out[i]))
    return out


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


def read_chunks(stream: IO[bytes], name: str, chunk_lines: int = CHUNK_LINES, first_no: int = 1
                ) -> Iterator[tuple[int, list[str]]]:
    """Yield (number of the first line, lines) from a binary stream, split on "\\n" only; the
    stream's first line is line `first_no`.

    Splitting on "\\n" alone (not str.splitlines, which also breaks at \\x0b, \\x1c, \\u2028 ...)
    keeps one output line per input line. Invalid UTF-8 and NUL bytes are errors naming the line.
    """
    chunk: list[str] = []
    first = first_no
    for no, raw in enumerate(stream, start=first_no):
        if b"\x00" in raw:
            raise DataError(f"{name}: line {no}: NUL byte; is this a binary file? give UTF-8 text")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{name}: line {no}: invalid UTF-8; convert the input to UTF-8 (e.g. with iconv)") from None
        chunk.append(line.rstrip("\n").rstrip("\r"))
        if len(chunk) >= chunk_lines:
            yield first, chunk
            first, chunk = no + 1, []
    if chunk:
        yield first, chunk


def read_as_available(stream: IO[bytes], name: str, chunk_lines: int = CHUNK_LINES
                      ) -> Iterator[tuple[int, list[str]]]:
    """Like read_chunks, but yields the complete lines that have arrived as soon as there are any
    (at most `chunk_lines`), instead of waiting for a full chunk: for stdin from a terminal or a
    pipe. Reads the file descriptor directly, so no line waits in Python's buffer."""
    fd = stream.fileno()
    pending, first = b"", 1
    while True:
        block = os.read(fd, 1 << 16)  # blocks until something arrives; b"" at end of input
        pending += block
        parts = pending.split(b"\n")
        pending = parts.pop() if block else b""
        if not block and parts == [b""]:
            parts = []
        for start in range(0, len(parts), chunk_lines):
            raw = b"".join(p + b"\n" for p in parts[start: start + chunk_lines])
            yield from read_chunks(io.BytesIO(raw), name, chunk_lines, first_no=first)  # the same checks
            first += len(parts[start: start + chunk_lines])
        if not block:
            return


def _arrives_over_time(stream: IO[bytes]) -> bool:
    """True for a terminal or a pipe (not a regular file, and a real file descriptor)."""
    try:
        return not stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):  # e.g. an in-memory stream in tests
        return False


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

    Output to a file goes to `.name.partial` first and is renamed only when complete, so an
    interrupted job never leaves a truncated file under the final name.
    """
    name = str(input_path) if input_path else "<stdin>"
    if input_path is not None:
        if not input_path.exists():
            raise DataError(f"input {input_path}: file not found (absolute path {input_path.resolve()})")
        if input_path.is_dir():
            raise DataError(f"input {input_path}: is a directory; give a text file")
    instream = open(input_path, "rb") if input_path else sys.stdin.buffer
    tmp = output_path.with_name(f".{output_path.name}.partial") if output_path else None
    outstream = open(tmp, "w", encoding="utf-8", newline="\n") if tmp else sys.stdout
    show_bar = progress if progress is not None else (output_path is not None and sys.stderr.isatty())
    bar = None
    if show_bar:
        from tqdm import tqdm

        total = _count_lines(input_path) if input_path else None
        bar = tqdm(total=total, unit="line", file=sys.stderr, dynamic_ncols=True)
    lines_done = 0
    # A terminal or a pipe may send a line and wait for its translation: translate what has
    # arrived so far and flush; files (and redirected files) are read in large chunks.
    interactive = input_path is None and _arrives_over_time(instream)
    chunks = read_as_available(instream, name, chunk_lines) if interactive else read_chunks(instream, name, chunk_lines)
    try:
        for first, chunk in chunks:
            translations = translate_lines(model, tokenizer, chunk, decode, device, first_line_no=first)
            outstream.write(format_output(translations, first - 1, decode.nbest))
            outstream.flush()
            lines_done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if tmp is not None:
            outstream.close()
            os.replace(tmp, output_path)
    except BaseException:
        if tmp is not None:
            outstream.close()
            tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
        if input_path is not None:
            instream.close()
    return {"lines": lines_done}


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def decode_overrides(cfg, overrides: list[str] | tuple[str, ...]):
    """`cfg` with `--set decode.*=...` applied; other keys are an error (a trained model is fixed)."""
    from mtkit.config import apply_overrides
    from mtkit.errors import ConfigError

    bad = [s for s in overrides if not s.split("=", 1)[0].strip().startswith("decode.")]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: only decode.* keys can be changed when translating")
    return apply_overrides(cfg, list(overrides), where="--set") if overrides else cfg


def decode_settings(base: DecodeConfig, beam: int | None = None, greedy: bool = False, nbest: int | None = None,
                    batch_tokens: int | None = None) -> DecodeConfig:
    """The checkpoint's decode settings with the command-line flags applied and checked."""
    from dataclasses import replace

    from mtkit.errors import ConfigError

    changes: dict[str, Any] = {}
    if greedy:
        changes["beam_size"] = 1
    elif beam is not None:
        changes["beam_size"] = beam
    if nbest is not None:
        changes["nbest"] = nbest
    if batch_tokens is not None:
        changes["batch_tokens"] = batch_tokens
    d = replace(base, **changes)
    if d.beam_size < 1:
        raise ConfigError(f"--beam: must be >= 1 (got {d.beam_size})")
    if d.nbest < 1 or d.nbest > d.beam_size:
        raise ConfigError(f"--nbest: must be between 1 and the beam size {d.beam_size} (got {d.nbest})")
    if d.batch_tokens < 1:
        raise ConfigError(f"--batch-tokens: must be >= 1 (got {d.batch_tokens})")
    return d

