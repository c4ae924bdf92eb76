"""SentencePiece subword vocabularies: train in memory, encode, decode, store as bytes.

A Tokenizer is one SentencePiece model (joint vocabulary) or two (source and target); its model
bytes travel inside every checkpoint so translation needs no side files. It does not read corpora
(pairs.py hands it text) and does not add BOS/EOS (padding.make_batch does).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from mtkit import files
from mtkit.config import TokenizerConfig
from mtkit.errors import DataError

log = logging.getLogger("mtkit")

# Fixed special ids, the same in every vocabulary, so model, batching and search agree on them.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = frozenset({PAD_ID, BOS_ID, EOS_ID})  # dropped when decoding (UNK stays visible)

JOINT_FILE = "spm.model"
SRC_FILE, TGT_FILE = "spm.src.model", "spm.tgt.model"

# SentencePiece refuses input_sentence_size values in 1..100 (0 would mean "all sentences").
MIN_INPUT_SENTENCE_SIZE = 101
REPLAY_LIMIT = 200_000  # sentences of a one-shot iterator kept for a retry (see _Replayable)
MAX_SENTENCE_BYTES = 4192  # SentencePiece's default max_sentence_length: longer lines are left out


class Tokenizer:
    """One joint SentencePiece model, or one per side.

    Args:
        src_model: serialized SentencePiece model (the bytes of a `.model` file) for the source.
        tgt_model: the same for the target; None means a joint vocabulary (src_model for both).

    Raises:
        DataError: if the bytes are not a SentencePiece model or lack the fixed special ids.
    """

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None) -> None:
        self._src_bytes = bytes(src_model)
        self._tgt_bytes = None if tgt_model is None else bytes(tgt_model)
        self._src = _processor(self._src_bytes, "source" if tgt_model is not None else "joint")
        self._tgt = self._src if tgt_model is None else _processor(self._tgt_bytes, "target")

    @property
    def joint(self) -> bool:
        """True when source and target share one vocabulary."""
        return self._tgt_bytes is None

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.get_piece_size()

    def encode_src(self, texts: list[str], tag: str | None = None) -> list[list[int]]:
        """Source sentences -> piece ids (no BOS/EOS); a `tag` (a corpus's tag, translate's --prefix)
        goes first, as the one piece it is."""
        ids = self._src.encode(list(texts), out_type=int)
        if tag is None:
            return ids
        first = self.tag_id(tag)
        return [[first, *x] for x in ids]

    def tag_id(self, tag: str) -> int:
        """The source piece id of a tag. Raises DataError when the vocabulary lacks it as one piece
        (tags become pieces when the tokenizer is trained: data.train's `tag`)."""
        piece = self._src.piece_to_id(tag)
        if piece == UNK_ID or piece in SPECIAL_IDS:
            raise DataError(f"tag {tag!r}: not a piece of this model's source vocabulary; tags are the `tag`s of"
                            " data.train when its tokenizer was trained")
        return piece

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        """Target sentences -> piece ids (no BOS/EOS)."""
        return self._tgt.encode(list(texts), out_type=int)

    def decode_src(self, ids: Iterable[Iterable[int]]) -> list[str]:
        """Source piece ids -> text; PAD/BOS/EOS ids are ignored."""
        return self._src.decode([_strip_special(x) for x in ids])

    def decode_tgt(self, ids: Iterable[Iterable[int]]) -> list[str]:
        """Target piece ids -> detokenized text; PAD/BOS/EOS ids are ignored."""
        return self._tgt.decode([_strip_special(x) for x in ids])

    def pieces(self, side: str) -> list[str]:
        """Every piece of the "src" or "tgt" vocabulary, in id order."""
        proc = self._src if side == "src" else self._tgt
        return [proc.id_to_piece(i) for i in range(proc.get_piece_size())]

    def to_bytes(self) -> dict[str, bytes]:
        """The model bytes as stored in checkpoints: {"src": ...} or {"src": ..., "tgt": ...}."""
        if self._tgt_bytes is None:
            return {"src": self._src_bytes}
        return {"src": self._src_bytes, "tgt": self._tgt_bytes}

    @classmethod
    def from_bytes(cls, d: dict[str, bytes]) -> Tokenizer:
        """Inverse of `to_bytes`."""
        if not isinstance(d, dict) or not isinstance(d.get("src"), (bytes, bytearray)):
            raise DataError("tokenizer: expected a mapping with the SentencePiece model bytes under 'src'")
        tgt = d.get("tgt")
        if tgt is not None and not isinstance(tgt, (bytes, bytearray)):
            raise DataError("tokenizer: the 'tgt' entry must hold SentencePiece model bytes")
        return cls(d["src"], tgt)

    def save(self, directory: Path) -> None:
        """Write `directory/spm.model` (joint) or `spm.src.model` + `spm.tgt.model`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        models = {JOINT_FILE: self._src_bytes} if self.joint else {SRC_FILE: self._src_bytes, TGT_FILE: self._tgt_bytes}
        for name, data in models.items():
            files.write_bytes(directory / name, data)  # atomic: a crash never leaves half a model
        for name in {JOINT_FILE, SRC_FILE, TGT_FILE} - set(models):
            (directory / name).unlink(missing_ok=True)  # a model of the other kind would shadow this one

    @classmethod
    def load(cls, directory: Path) -> Tokenizer | None:
        """Read the models written by `save`; None if `directory` holds none."""
        directory = Path(directory)
        joint, src, tgt = directory / JOINT_FILE, directory / SRC_FILE, directory / TGT_FILE
        if joint.is_file():
            paths = [joint]
        elif src.is_file() or tgt.is_file():
            missing = tgt if src.is_file() else src
            if not missing.is_file():
                raise DataError(
                    f"{missing.resolve()}: missing; a separate-vocabulary tokenizer needs both "
                    f"{SRC_FILE} and {TGT_FILE} (delete the other to retrain both)"
                )
            paths = [src, tgt]
        else:
            return None
        models = []
        for path in paths:
            try:
                models.append(path.read_bytes())
            except OSError as e:
                raise DataError(f"{path.resolve()}: cannot read tokenizer model: {e.strerror}") from None
        try:
            return cls(*models)
        except DataError as e:
            names = " and ".join(str(p.resolve()) for p in paths)
            raise DataError(f"{names}: {e}; delete the file(s) to retrain the tokenizer") from None

    # Picklable (for `datasets.map(num_proc>1)`): the processors are rebuilt from the bytes.
    def __getstate__(self) -> dict[str, Any]:
        return {"src": self._src_bytes, "tgt": self._tgt_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["src"], state["tgt"])

    def __repr__(self) -> str:
        kind = "joint" if self.joint else "separate"
        return f"Tokenizer({kind}, src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size})"


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
                pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
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


def _strip_special(ids: Iterable[int]) -> list[int]:
    return [int(i) for i in ids if int(i) not in SPECIAL_IDS]


def _processor(model: bytes, side: str) -> Any:
    """Load a SentencePiece model from bytes and check its special ids."""
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model)
    except Exception as e:  # SentencePiece raises RuntimeError/OSError with C++ text
        raise DataError(f"tokenizer: the {side} model bytes are not a SentencePiece model ({e})") from None
    got = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
    if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise DataError(
            f"tokenizer: the {side} model has special ids pad/unk/bos/eos = {got}, mtkit needs"
            f" {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; let mtkit train the tokenizer"
        )
    return sp

