"""Training a SentencePiece tokenizer in memory on the training text (tokenizer.py holds the result).

The special ids are mtkit's (tokenizer.py); tags become user-defined symbols; a vocabulary size
too large for the text is lowered with a warning, and SentencePiece's errors become lines that say
which setting to change.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

from mtkit.config import TokenizerConfig
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_PIECES, UNK_ID, Tokenizer
from mtkit.errors import DataError

log = logging.getLogger("mtkit")

# SentencePiece refuses input_sentence_size values in 1..100 (0 would mean "all sentences").
MIN_INPUT_SENTENCE_SIZE = 101
REPLAY_LIMIT = 200_000  # sentences of a one-shot iterator kept for a retry (see _Replayable)
MAX_SENTENCE_BYTES = 4192  # SentencePiece's default max_sentence_length: longer lines are left out


def train_tokenizer(cfg: TokenizerConfig, src_texts: Iterable[str], tgt_texts: Iterable[str],
                    tags: Sequence[str] = ()) -> Tokenizer:
    """Train SentencePiece in memory on the training text.

    SentencePiece samples `cfg.input_sentence_size` sentences (shuffled), so huge corpora train in
    bounded memory and time. If the corpus is too small for `cfg.vocab_size`, a warning is logged
    and the largest size SentencePiece supports is used instead.

    Args:
        cfg: the `tokenizer` config section.
        src_texts: source sentences: any iterable. A retry after lowering the vocabulary size
            reads them again; a one-shot iterator (e.g. a generator) is replayed from a copy kept
            while it holds at most REPLAY_LIMIT sentences.
        tgt_texts: target sentences, likewise.
        tags: pieces that must stay whole (data.train's tags, e.g. "<BT>"): SentencePiece
            user-defined symbols of the source vocabulary (the joint one, or the source model).

    Returns:
        A joint Tokenizer if `cfg.joint`, else one with a model per side.

    Raises:
        DataError: if no usable vocabulary can be trained (says which setting to change).
    """
    src_texts, tgt_texts = _replayable(src_texts), _replayable(tgt_texts)
    if cfg.joint:
        return Tokenizer(_train_model(cfg, [src_texts, tgt_texts], "joint", tags))
    return Tokenizer(_train_model(cfg, [src_texts], "source", tags), _train_model(cfg, [tgt_texts], "target"))


# ----------------------------------------------------------------------------- internals


def _train_model(cfg: TokenizerConfig, sources: list[Iterable[str]], side: str, tags: Sequence[str] = ()) -> bytes:
    """Train one SentencePiece model, lowering the vocabulary size if SentencePiece asks to."""
    vocab_size = cfg.vocab_size
    for _ in range(4):  # a lowered size is normally accepted at once; never loop forever
        writer = io.BytesIO()
        too_long = {"lines": 0}
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_sentences(sources, too_long),
                max_sentence_length=MAX_SENTENCE_BYTES,
                model_writer=writer,
                model_type=cfg.model_type,
                vocab_size=vocab_size,
                character_coverage=cfg.character_coverage,
                input_sentence_size=max(cfg.input_sentence_size, MIN_INPUT_SENTENCE_SIZE),
                shuffle_input_sentence=True,
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                **dict(zip(("pad_piece", "unk_piece", "bos_piece", "eos_piece"), SPECIAL_PIECES)),
                user_defined_symbols=list(tags),  # always one piece, never split (ids follow the special ones)
                minloglevel=2,  # keep SentencePiece's progress chatter off stderr
            )
            if too_long["lines"]:
                log.warning("tokenizer: %d %s line(s) longer than %d bytes were left out of tokenizer training",
                            too_long["lines"], side, MAX_SENTENCE_BYTES)
            return writer.getvalue()
        except RuntimeError as e:
            message = str(e)
            if too_long["lines"]:
                message += f" ({too_long['lines']} line(s) longer than {MAX_SENTENCE_BYTES} bytes were left out)"
        too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
        if too_high and int(too_high.group(2)) < vocab_size:
            lower = int(too_high.group(2))
            if not all(getattr(texts, "replayable", True) for texts in sources):
                raise DataError(
                    f"tokenizer.vocab_size: {vocab_size} is too high for the {side} training text;"
                    f" set tokenizer.vocab_size <= {lower}"
                )
            log.warning(
                "tokenizer: the %s training text is too small for tokenizer.vocab_size=%d; using %d pieces"
                " (set tokenizer.vocab_size <= %d to silence this)", side, vocab_size, lower, lower,
            )
            vocab_size = lower
            continue
        raise DataError(_explain_failure(message, cfg, side))
    raise DataError(f"tokenizer: SentencePiece kept rejecting the {side} vocabulary size; last error: {message}")


def _explain_failure(message: str, cfg: TokenizerConfig, side: str) -> str:
    """Turn a SentencePiece training error into a message that says what to set."""
    chars = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if chars:
        need = int(chars.group(2))
        return (
            f"tokenizer.vocab_size: {cfg.vocab_size} is too small for the {need - 4} distinct characters of the"
            f" {side} training text (plus 4 special pieces); set tokenizer.vocab_size >= {need}"
            f" or lower tokenizer.character_coverage (now {cfg.character_coverage})"
        )
    if "character_coverage()" in message:
        return (
            f"tokenizer.character_coverage: SentencePiece accepts values in [0.98, 1]"
            f" (got {cfg.character_coverage})"
        )
    if "empty" in message.lower() or "no sentence" in message.lower():
        skipped = re.search(r"\((\d+) line\(s\) longer than", message)
        if skipped:
            return (f"tokenizer: no {side} training line is short enough: all {skipped.group(1)} are longer than"
                    f" {MAX_SENTENCE_BYTES} bytes (and data.max_len would drop them from training); check data.train")
        return f"tokenizer: the {side} training text is empty; check data.train"
    detail = re.sub(r"^\S*\s*src/\S+ \[[^\]]*\]\s*", "", message.strip()) or message.strip()
    return f"tokenizer: SentencePiece could not train the {side} vocabulary: {detail}"


def _sentences(sources: list[Iterable[str]], too_long: dict[str, int]) -> Iterator[str]:
    """Every non-empty sentence of every source (SentencePiece rejects non-str items), except those
    over SentencePiece's length limit, which are counted in too_long["lines"] (it would skip them
    silently)."""
    for texts in sources:
        for text in texts:
            if isinstance(text, str) and text:
                if len(text) * 4 > MAX_SENTENCE_BYTES and len(text.encode("utf-8")) > MAX_SENTENCE_BYTES:
                    too_long["lines"] += 1
                    continue
                yield text


class _Replayable:
    """Iterate a one-shot iterator once, keeping a copy for a retry while it is small.

    A retry (vocabulary size lowered) only happens for small corpora, so a copy of up to
    REPLAY_LIMIT sentences is kept; a bigger corpus never needs it and keeps memory flat.
    """

    def __init__(self, texts: Iterator[str]) -> None:
        self._texts: Iterator[str] | None = texts
        self._copy: list[str] | None = []

    @property
    def replayable(self) -> bool:
        """False once the copy was dropped because the text was too big to keep."""
        return self._copy is not None

    def __iter__(self) -> Iterator[str]:
        if self._texts is None:  # second pass
            yield from self._copy or ()
            return
        texts, self._texts = self._texts, None
        for text in texts:
            if self._copy is not None:
                self._copy.append(text)
                if len(self._copy) > REPLAY_LIMIT:
                    self._copy = None
            yield text


def _replayable(texts: Iterable[str]) -> Iterable[str]:
    """Lists and dataset columns can be read again; one-shot iterators get a bounded copy."""
    return _Replayable(texts) if iter(texts) is texts else texts
