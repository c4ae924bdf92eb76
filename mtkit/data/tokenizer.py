"""SentencePiece subword vocabularies: encode, decode, store as bytes.

A Tokenizer is one SentencePiece model (joint vocabulary) or two (source and target); its model
bytes travel inside every checkpoint so translation needs no side files. It does not read corpora
(pairs.py hands it text), does not add BOS/EOS (padding.make_batch does) and is trained by
tokenizer_training.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from mtkit import files
from mtkit.errors import DataError

# Fixed special ids, the same in every vocabulary, so model, batching and search agree on them.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = frozenset({PAD_ID, BOS_ID, EOS_ID})  # dropped when decoding (UNK stays visible)

SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>")  # the pieces at PAD_ID, UNK_ID, BOS_ID, EOS_ID

JOINT_FILE = "spm.model"
SRC_FILE, TGT_FILE = "spm.src.model", "spm.tgt.model"
VOCAB_FILE = "vocab.json"  # a vocabulary table (an imported model's): its pieces in id order


class Tokenizer:
    """One joint SentencePiece model, or one per side; optionally with a vocabulary table.

    Args:
        src_model: serialized SentencePiece model (the bytes of a `.model` file) for the source.
        tgt_model: the same for the target; None means a joint vocabulary (src_model for both).
        vocab: a vocabulary table shared by both sides (an imported Marian model's, reordered so that
            mtkit's special ids hold SPECIAL_PIECES): the models then only cut text into pieces and
            the table gives each piece its id (pieces it lacks are UNK), as MarianTokenizer does.

    Raises:
        DataError: if the bytes are not a SentencePiece model, or lack the fixed special ids (without
            a table), or the table does not start with SPECIAL_PIECES.
    """

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None, vocab: Sequence[str] | None = None) -> None:
        self._src_bytes = bytes(src_model)
        self._tgt_bytes = None if tgt_model is None else bytes(tgt_model)
        table = vocab is not None
        self._src = _processor(self._src_bytes, "source" if tgt_model is not None else "joint", check_ids=not table)
        self._tgt = self._src if tgt_model is None else _processor(self._tgt_bytes, "target", check_ids=not table)
        self._vocab = None if vocab is None else [str(p) for p in vocab]
        self._ids = None if vocab is None else _table_ids(self._vocab)

    @property
    def joint(self) -> bool:
        """True when source and target share one vocabulary (one model, or one table)."""
        return self._tgt_bytes is None or self._vocab is not None

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size() if self._vocab is None else len(self._vocab)

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.get_piece_size() if self._vocab is None else len(self._vocab)

    def encode_src(self, texts: list[str], tag: str | None = None) -> list[list[int]]:
        """Source sentences -> piece ids (no BOS/EOS); a `tag` (a corpus's tag, translate's --prefix)
        goes first, as the one piece it is."""
        ids = self._encode(self._src, texts)
        if tag is None:
            return ids
        first = self.tag_id(tag)
        return [[first, *x] for x in ids]

    def tag_id(self, tag: str) -> int:
        """The source piece id of a tag. Raises DataError when the vocabulary lacks it as one piece
        (tags become pieces when the tokenizer is trained: data.train's `tag`)."""
        piece = self._src.piece_to_id(tag) if self._ids is None else self._ids.get(tag, UNK_ID)
        if piece == UNK_ID or piece in SPECIAL_IDS:
            raise DataError(f"tag {tag!r}: not a piece of this model's source vocabulary; tags are the `tag`s of"
                            " data.train when its tokenizer was trained")
        return piece

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        """Target sentences -> piece ids (no BOS/EOS)."""
        return self._encode(self._tgt, texts)

    def _encode(self, proc: Any, texts: list[str]) -> list[list[int]]:
        if self._ids is None:
            return proc.encode(list(texts), out_type=int)
        unk, ids = UNK_ID, self._ids
        return [[ids.get(p, unk) for p in pieces] for pieces in proc.encode(list(texts), out_type=str)]

    def decode_src(self, ids: Iterable[Iterable[int]]) -> list[str]:
        """Source piece ids -> text; PAD/BOS/EOS ids are ignored."""
        return self._decode(self._src, ids)

    def decode_tgt(self, ids: Iterable[Iterable[int]]) -> list[str]:
        """Target piece ids -> detokenized text; PAD/BOS/EOS ids are ignored."""
        return self._decode(self._tgt, ids)

    def _decode(self, proc: Any, ids: Iterable[Iterable[int]]) -> list[str]:
        rows = [_strip_special(x) for x in ids]
        if self._vocab is None:
            return proc.decode(rows)
        return [proc.decode_pieces([self._vocab[i] for i in row]) for row in rows]

    def pieces(self, side: str) -> list[str]:
        """Every piece of the "src" or "tgt" vocabulary, in id order."""
        if self._vocab is not None:
            return list(self._vocab)
        proc = self._src if side == "src" else self._tgt
        return [proc.id_to_piece(i) for i in range(proc.get_piece_size())]

    def to_bytes(self) -> dict[str, bytes]:
        """As stored in checkpoints: {"src": model bytes}, plus "tgt" (a model per side) and "vocab"
        (a table: its pieces as UTF-8 JSON)."""
        d = {"src": self._src_bytes}
        if self._tgt_bytes is not None:
            d["tgt"] = self._tgt_bytes
        if self._vocab is not None:
            d["vocab"] = json.dumps(self._vocab, ensure_ascii=False).encode("utf-8")
        return d

    @classmethod
    def from_bytes(cls, d: dict[str, bytes]) -> Tokenizer:
        """Inverse of `to_bytes`."""
        if not isinstance(d, dict) or not isinstance(d.get("src"), (bytes, bytearray)):
            raise DataError("tokenizer: expected a mapping with the SentencePiece model bytes under 'src'")
        tgt = d.get("tgt")
        if tgt is not None and not isinstance(tgt, (bytes, bytearray)):
            raise DataError("tokenizer: the 'tgt' entry must hold SentencePiece model bytes")
        return cls(d["src"], tgt, None if d.get("vocab") is None else _parse_table(d["vocab"], "the checkpoint"))

    def save(self, directory: Path) -> None:
        """Write `directory/spm.model` (joint) or `spm.src.model` + `spm.tgt.model`, and `vocab.json`
        with a table."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._tgt_bytes is None:
            found = {JOINT_FILE: self._src_bytes}
        else:
            found = {SRC_FILE: self._src_bytes, TGT_FILE: self._tgt_bytes}
        if self._vocab is not None:
            found[VOCAB_FILE] = self.to_bytes()["vocab"]
        for name, data in found.items():
            files.write_bytes(directory / name, data)  # atomic: a crash never leaves half a model
        for name in {JOINT_FILE, SRC_FILE, TGT_FILE, VOCAB_FILE} - set(found):
            (directory / name).unlink(missing_ok=True)  # a model of the other kind would shadow this one

    @classmethod
    def load(cls, directory: Path) -> Tokenizer | None:
        """Read the models written by `save`; None if `directory` holds none."""
        directory = Path(directory)
        joint, src, tgt, table = (directory / name for name in (JOINT_FILE, SRC_FILE, TGT_FILE, VOCAB_FILE))
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
        contents = []
        for path in paths + ([table] if table.is_file() else []):
            try:
                contents.append(path.read_bytes())
            except OSError as e:
                raise DataError(f"{path.resolve()}: cannot read tokenizer model: {e.strerror}") from None
        try:
            if table.is_file():
                return cls(*contents[:-1], vocab=_parse_table(contents[-1], str(table.resolve())))
            return cls(*contents)
        except DataError as e:
            names = " and ".join(str(p.resolve()) for p in paths)
            raise DataError(f"{names}: {e}; delete the file(s) to retrain the tokenizer") from None

    # Picklable (for `datasets.map(num_proc>1)`): the processors are rebuilt from the bytes.
    def __getstate__(self) -> dict[str, Any]:
        return {"src": self._src_bytes, "tgt": self._tgt_bytes, "vocab": self._vocab}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["src"], state["tgt"], state.get("vocab"))

    def __repr__(self) -> str:
        kind = "table" if self._vocab is not None else "joint" if self.joint else "separate"
        return f"Tokenizer({kind}, src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size})"


def _strip_special(ids: Iterable[int]) -> list[int]:
    return [int(i) for i in ids if int(i) not in SPECIAL_IDS]


def _table_ids(vocab: list[str]) -> dict[str, int]:
    """piece -> id of a vocabulary table, which must hold SPECIAL_PIECES at the special ids."""
    if tuple(vocab[: len(SPECIAL_PIECES)]) != SPECIAL_PIECES:
        raise DataError(f"tokenizer: a vocabulary table must start with {list(SPECIAL_PIECES)}"
                        f" (got {vocab[: len(SPECIAL_PIECES)]})")
    ids: dict[str, int] = {}
    for i, piece in enumerate(vocab):
        ids.setdefault(piece, i)
    return ids


def _parse_table(data: bytes, where: str) -> list[str]:
    """The pieces of a stored vocabulary table (a JSON list of strings)."""
    try:
        vocab = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where}: the vocabulary table is not JSON ({e})") from None
    if not isinstance(vocab, list) or not all(isinstance(p, str) for p in vocab):
        raise DataError(f"{where}: the vocabulary table must be a JSON list of pieces")
    return vocab


def _processor(model: bytes, side: str, check_ids: bool = True) -> Any:
    """Load a SentencePiece model from bytes and check its special ids (without a table)."""
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model)
    except Exception as e:  # SentencePiece raises RuntimeError/OSError with C++ text
        raise DataError(f"tokenizer: the {side} model bytes are not a SentencePiece model ({e})") from None
    got = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
    if check_ids and got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise DataError(
            f"tokenizer: the {side} model has special ids pad/unk/bos/eos = {got}, mtkit needs"
            f" {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; let mtkit train the tokenizer"
        )
    return sp

