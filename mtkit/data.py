"""Sentence pairs: read any source into a Hugging Face `datasets` table, encode, filter, batch.

Sources are plain-text file pairs (also .gz), one .tsv/.csv/.jsonl/.parquet file, a folder
written by `save_to_disk`, or a Hub dataset; each becomes an Arrow-backed Dataset with "src" and
"tgt" columns, checked before anything expensive. This module does not train the tokenizer
(tokenizer.py) or choose batch sizes (batching.py); `make_batch` only pads given rows.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtkit.config import Config, DataConfig, SplitConfig
from mtkit.errors import DataError, MtkitError
from mtkit.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

if TYPE_CHECKING:
    import datasets
    import torch

log = logging.getLogger("mtkit")

READ_CHUNK = 16 << 20  # bytes read at a time: memory stays flat however big the file is
SMALL_DATASET = 50_000  # below this, one encoding process beats paying for worker start-up
READER_VERSION = "1"  # part of every cache key; bump when the readers' output changes
WRITE_BATCH = 20_000  # pairs per Arrow record batch written to the cache
TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")


# ----------------------------------------------------------------------------- loading


def load_pairs(
    split: SplitConfig, data: DataConfig, name: str, cache_dir: Path | None = None
) -> datasets.Dataset:
    """Read one split into a Dataset with string columns "src" and "tgt".

    Text sources are checked completely first (UTF-8, no NUL bytes, equal line counts) and then
    written once into an Arrow file in the cache, keyed by path, size and mtime. Formats: `src` +
    `tgt` one sentence per line (.gz too; "\\r\\n" accepted); `path` to a .tsv (raw tab-separated
    fields: quotes are text), .csv (standard quoting), .jsonl/.json (one object per line), .parquet
    (any of them .gz but parquet), or a save_to_disk folder; `hub` via `datasets.load_dataset`.
    Columns are `data.src_lang`/`tgt_lang` unless `src_field`/`tgt_field` say otherwise; HF's
    {"translation": {...}} nesting is recognised. A streamed Hub split is read once, in full, into
    the Arrow cache (batching needs random access).

    Args:
        split: where the pairs come from (exactly one of src+tgt, path, hub).
        data: the data section (its languages are the default column names).
        name: "train", "valid" or "test"; messages name keys as `data.<name>.<key>`.
        cache_dir: folder for datasets' Arrow cache (e.g. run_dir/cache); None = datasets' default.

    Raises:
        DataError: naming the key, the absolute path, the line and how to fix it.
    """
    _quiet_datasets()
    key = f"data.{name}"
    src_field, tgt_field = split.src_field or data.src_lang, split.tgt_field or data.tgt_lang
    cache = str(cache_dir) if cache_dir is not None else None
    if split.src or split.tgt:
        if not (split.src and split.tgt):
            raise DataError(f"{key}: a file pair needs both src and tgt")
        return _load_file_pair(Path(split.src), Path(split.tgt), key, name, cache)
    if split.path:
        return _load_path(Path(split.path), split, src_field, tgt_field, f"{key}.path", name, cache)
    if split.hub:
        return _load_hub(split, src_field, tgt_field, f"{key}.hub", name, cache)
    raise DataError(f"{key}: give one of src+tgt, path or hub")


def _load_file_pair(src: Path, tgt: Path, key: str, name: str, cache: str | None) -> datasets.Dataset:
    """Two line-aligned plain-text files -> pairs, after checking both files completely."""
    src_lines = _scan_text(src, f"{key}.src")
    tgt_lines = _scan_text(tgt, f"{key}.tgt")
    if src_lines != tgt_lines:
        raise DataError(
            f"{key}: {src.resolve()} has {src_lines} lines but {tgt.resolve()} has {tgt_lines};"
            " the files must be line-aligned (line i of one translates line i of the other)"
        )
    if src_lines == 0:
        raise DataError(f"{key}.src: {src.resolve()}: is empty; give files with one sentence per line")
    return _materialise(_pair_rows(src, tgt, key), name, cache, f"{key}: {src.resolve()}", key=_stamp(src, tgt))


def _load_path(
    path: Path, split: SplitConfig, src_field: str, tgt_field: str, key: str, name: str, cache: str | None
) -> datasets.Dataset:
    """One table file or a save_to_disk folder -> pairs."""
    import datasets

    where = f"{key}: {path.resolve()}"
    if not path.exists():
        raise DataError(f"{where}: not found")
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - anything from a foreign folder is the user's data problem
            if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
                raise DataError(f"{where}: cannot read this save_to_disk folder ({_short(e)}); is it empty or damaged?") from e
            raise DataError(
                f"{where}: a folder, but not one written by Dataset.save_to_disk ({_short(e)});"
                " give a .tsv/.csv/.jsonl/.parquet file or a save_to_disk folder"
            ) from e
        if isinstance(ds, datasets.DatasetDict):
            if split.split not in ds:
                raise DataError(
                    f"{where}: has splits {', '.join(ds)} but not {split.split!r};"
                    f" set {key.rsplit('.', 1)[0]}.split to one of them"
                )
            ds = ds[split.split]
        return _select_pair_columns(ds, src_field, tgt_field, where)
    suffix = _suffix(path)
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"{where}: unknown file type {suffix or '(none)'}; expected .tsv, .csv, .jsonl or .parquet"
            " (optionally .gz), or use src+tgt for two plain-text files"
        )
    if suffix == ".parquet":
        return _load_parquet(path, src_field, tgt_field, where, cache)
    lines = _scan_text(path, key)
    if lines == 0:
        raise DataError(f"{where}: the file is empty")
    if suffix in (".tsv", ".csv"):
        header = _table_header(path, suffix)
        missing = [f for f in (src_field, tgt_field) if f not in header]
        if missing:
            raise DataError(
                f"{where}: header has no column {', '.join(map(repr, missing))}; its columns are"
                f" {', '.join(map(repr, header))}; set {key.rsplit('.', 1)[0]}.src_field/tgt_field"
            )
        rows = _table_rows(path, where, src_field, tgt_field)
    else:
        rows = _jsonl_rows(path, where, src_field, tgt_field)
    return _materialise(rows, name, cache, where, key=f"{_stamp(path)}|{src_field}|{tgt_field}")


def _load_parquet(path: Path, src_field: str, tgt_field: str, where: str, cache: str | None) -> datasets.Dataset:
    import datasets
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        names = meta.schema.to_arrow_schema().names
    except Exception as e:  # noqa: BLE001 - a corrupt file raises ArrowInvalid, OSError, ...
        raise DataError(f"{where}: not a readable Parquet file ({_short(e)})") from e
    columns = _pick_columns(names, src_field, tgt_field, where)
    if meta.num_rows == 0:
        raise DataError(f"{where}: no sentence pairs in it")
    try:
        ds = datasets.Dataset.from_parquet(str(path.resolve()), columns=columns, cache_dir=cache)
    except Exception as e:  # noqa: BLE001 - a damaged row group surfaces only here
        raise DataError(f"{where}: cannot read ({_short(e)})") from e
    return _select_pair_columns(ds, src_field, tgt_field, where)


def _load_hub(split: SplitConfig, src_field: str, tgt_field: str, key: str, name: str, cache: str | None):
    """A Hub dataset: from here on it is handled exactly like a local save_to_disk folder."""
    import datasets

    where = f"{key}: {split.hub}" + (f" ({split.hub_config})" if split.hub_config else "") + f" split {split.split!r}"
    try:
        ds = datasets.load_dataset(
            split.hub, split.hub_config, split=split.split, streaming=split.streaming, cache_dir=cache
        )
    except Exception as e:  # noqa: BLE001 - network, unknown names and bad configs all land here
        raise DataError(f"{where}: cannot load ({_short(e)}); check the name, hub_config, split and network") from e
    if isinstance(ds, datasets.IterableDataset):
        # Streaming train sets are read once into the Arrow cache: batching needs random access.
        # (Hub datasets are versioned, so the cache key is the name: a new revision needs a new run.)
        rows = _stream_rows(ds, where, src_field, tgt_field)
        return _materialise(rows, name, cache, where, key=f"hub|{where}|{src_field}|{tgt_field}")
    return _select_pair_columns(ds, src_field, tgt_field, where)


def _materialise(rows: Iterator[tuple[str, str]], name: str, cache: str | None, where: str, key: str):
    """Write (src, tgt) rows once into an Arrow file in the cache and memory-map it.

    Like `Dataset.from_generator`, but written in batches (about 10x faster on 366k pairs) and
    keyed by `key`, which holds each file's absolute path, size and mtime: an edited file gets a
    new cache file and is never served stale.
    """
    import datasets
    import pyarrow as pa

    folder = Path(cache if cache is not None else datasets.config.HF_DATASETS_CACHE) / "mtkit-pairs"
    path = folder / f"{name}-{hashlib.sha256(f'{READER_VERSION}|{key}'.encode()).hexdigest()[:32]}.arrow"
    if not path.is_file():
        schema = pa.schema([("src", pa.string()), ("tgt", pa.string())])
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                total = 0
                while batch := list(itertools.islice(rows, WRITE_BATCH)):
                    total += len(batch)
                    src, tgt = zip(*batch, strict=True)
                    writer.write_table(pa.table([pa.array(src, pa.string()), pa.array(tgt, pa.string())], schema=schema))
            if total == 0:
                raise DataError(f"{where}: no sentence pairs in it")
            os.replace(tmp, path)
        except OSError as e:
            raise DataError(f"{where}: cannot write the data cache in {folder} ({e}); free disk space"
                            " or choose a writable run_dir") from e
        finally:
            tmp.unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(path))


def _select_pair_columns(ds: datasets.Dataset, src_field: str, tgt_field: str, where: str) -> datasets.Dataset:
    """Keep the two text columns as "src"/"tgt" (flattening HF's {"translation": {...}} nesting)."""
    columns = _pick_columns(ds.column_names, src_field, tgt_field, where, ds.features)
    if columns == ["translation"]:
        ds = ds.flatten().select_columns([f"translation.{src_field}", f"translation.{tgt_field}"])
        src_col, tgt_col = f"translation.{src_field}", f"translation.{tgt_field}"
    else:
        ds = ds.select_columns(columns)
        src_col, tgt_col = src_field, tgt_field
    for col in (src_col, tgt_col):
        dtype = getattr(ds.features[col], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise DataError(f"{where}: column {col!r} holds {ds.features[col]}, expected text")
    ds = _check_not_empty(ds.rename_columns({src_col: "src", tgt_col: "tgt"}), where)
    nulls = sum(ds.data.column(c).null_count for c in ("src", "tgt"))
    if nulls:  # the tokenizer cannot encode None; an empty side is dropped from training later
        log.warning("%s: %d missing (null) texts read as empty strings", where, nulls)
        ds = ds.map(_fill_nulls, batched=True, desc="filling nulls")
    return ds


def _fill_nulls(batch: dict[str, list]) -> dict[str, list]:
    return {k: ["" if t is None else t for t in v] for k, v in batch.items()}


def _pick_columns(names: Sequence[str], src_field: str, tgt_field: str, where: str, features=None) -> list[str]:
    if src_field == tgt_field:
        raise DataError(f"{where}: src_field and tgt_field both name {src_field!r}; give two different columns")
    if src_field in names and tgt_field in names:
        return [src_field, tgt_field]
    if "translation" in names:
        inner = features["translation"] if features is not None else None  # a dict or datasets.Translation
        langs = list(inner) if isinstance(inner, dict) else getattr(inner, "languages", None)
        if langs is None or (src_field in langs and tgt_field in langs):
            return ["translation"]
        raise DataError(
            f"{where}: its 'translation' entries have languages {', '.join(langs)}, not both"
            f" {src_field!r} and {tgt_field!r}; set data.src_lang/tgt_lang or src_field/tgt_field"
        )
    raise DataError(
        f"{where}: no column {src_field!r} and {tgt_field!r}; it has columns {', '.join(map(repr, names))};"
        " set data.src_lang/tgt_lang or the split's src_field/tgt_field"
    )


def _check_not_empty(ds: datasets.Dataset, where: str) -> datasets.Dataset:
    if len(ds) == 0:
        raise DataError(f"{where}: no sentence pairs in it")
    return ds


# ----------------------------------------------------------------------------- encoding and filtering


@dataclass
class DropReport:
    """Training pairs dropped by `filter_train`, by reason (the first matching reason counts)."""

    total: int
    empty: int
    too_long: int
    bad_ratio: int
    kept: int

    def format(self) -> str:
        """One log line."""
        return (
            f"{self.total:,} pairs, kept {self.kept:,}; dropped {self.empty:,} with an empty side,"
            f" {self.too_long:,} too long, {self.bad_ratio:,} with a bad length ratio"
        )


def encode_pairs(ds: datasets.Dataset, tokenizer: Tokenizer, num_proc: int | None) -> datasets.Dataset:
    """Add "src_ids" and "tgt_ids" (lists of int32 piece ids, no BOS/EOS) to every pair.

    Args:
        ds: pairs from `load_pairs`.
        tokenizer: the run's tokenizer.
        num_proc: encoding processes; None = min(4, CPU cores), or 1 below 50k pairs where
            starting workers costs more than it saves.
    """
    import datasets

    if num_proc is None:
        num_proc = 1 if len(ds) < SMALL_DATASET else min(4, os.cpu_count() or 1)
    num_proc = max(1, min(num_proc, len(ds)))
    ids = datasets.List(datasets.Value("int32"))
    features = datasets.Features({**ds.features, "src_ids": ids, "tgt_ids": ids})
    # datasets caches the result under a fingerprint of (ds, _Encode(tokenizer)): the tokenizer
    # pickles as its model bytes, so another vocabulary never reuses a stale encoding.
    return ds.map(
        _Encode(tokenizer), batched=True, batch_size=2000, num_proc=num_proc if num_proc > 1 else None,
        features=features, desc="encoding",
    )


class _Encode:
    """The `map` function; a class (not a closure) so it pickles for worker processes."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {"src_ids": self.tokenizer.encode_src(batch["src"]), "tgt_ids": self.tokenizer.encode_tgt(batch["tgt"])}


def token_lengths(ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of "src_ids" and "tgt_ids" (without BOS/EOS) as int64 arrays, computed in Arrow.

    Use this rather than `[len(x) for x in ds["src_ids"]]`: milliseconds instead of seconds.
    """
    import pyarrow.compute as pc

    def lengths(column) -> np.ndarray:
        return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)

    # On the backing table, then through the row mapping that select/filter leave (datasets'
    # public path for a mapped dataset copies every row first: ~1 s and 250 MB on Ding).
    src, tgt = lengths(ds.data.column("src_ids")), lengths(ds.data.column("tgt_ids"))
    mapping = getattr(ds, "_indices", None)
    if mapping is not None:
        rows = mapping.column(0).to_numpy()
        src, tgt = src[rows], tgt[rows]
    if len(src) != len(ds):  # datasets changed its internals: take the slow public path
        table = ds.with_format("arrow", columns=["src_ids", "tgt_ids"])[:]
        src, tgt = lengths(table.column("src_ids")), lengths(table.column("tgt_ids"))
    return src, tgt


def filter_train(ds: datasets.Dataset, max_len: int, max_len_ratio: float) -> tuple[datasets.Dataset, DropReport]:
    """Drop training pairs with an empty side, a side over `max_len` tokens, or a length ratio
    (longer / shorter, in tokens) over `max_len_ratio`; counted in that order of reasons."""
    src, tgt = token_lengths(ds)
    report, keep = _drop_counts(src, tgt, max_len, max_len_ratio)
    if report.kept < report.total:
        ds = ds.select(np.flatnonzero(keep))  # an index mapping over the same Arrow data: no copy
    return ds, report


def _drop_counts(src: np.ndarray, tgt: np.ndarray, max_len: int, ratio: float) -> tuple[DropReport, np.ndarray]:
    empty = (src == 0) | (tgt == 0)
    too_long = ~empty & ((src > max_len) | (tgt > max_len))
    bad_ratio = ~empty & ~too_long & (np.maximum(src, tgt) > ratio * np.minimum(src, tgt))
    keep = ~(empty | too_long | bad_ratio)
    counts = [int(m.sum()) for m in (empty, too_long, bad_ratio, keep)]
    return DropReport(len(src), *counts), keep


def prepare_train(data: DataConfig, tokenizer: Tokenizer, cache_dir: Path | None) -> tuple[datasets.Dataset, DropReport]:
    """Load, encode and filter the training pairs.

    Raises:
        DataError: if nothing is left after filtering.
    """
    ds = encode_pairs(load_pairs(data.train, data, "train", cache_dir), tokenizer, data.num_proc)
    ds, report = filter_train(ds, data.max_len, data.max_len_ratio)
    log.info("data.train: %s", report.format())
    if report.kept == 0:
        raise DataError(
            f"data.train: empty after filtering: {report.format()}; raise data.max_len (now {data.max_len})"
            f" or data.max_len_ratio (now {data.max_len_ratio}), or check that the files hold text"
        )
    return ds, report


def prepare_eval(
    split: SplitConfig, data: DataConfig, tokenizer: Tokenizer, name: str, cache_dir: Path | None
) -> datasets.Dataset:
    """Load and encode dev/test pairs, unfiltered: BLEU is computed on every line."""
    return encode_pairs(load_pairs(split, data, name, cache_dir), tokenizer, data.num_proc)


def make_batch(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """Pad rows of piece ids into int64 tensors (used by training, validation and translation).

    Returns:
        "src": [B, S] ids + EOS, right-padded with PAD;
        with `tgt_ids` also "tgt_in": [B, T] BOS + ids and "tgt_out": [B, T] ids + EOS (padded).
    """
    import torch

    batch = {"src": torch.from_numpy(_pad(src_ids, lead=None, tail=EOS_ID))}
    if tgt_ids is not None:
        if len(tgt_ids) != len(src_ids):
            raise ValueError(f"make_batch: {len(src_ids)} source rows but {len(tgt_ids)} target rows")
        batch["tgt_in"] = torch.from_numpy(_pad(tgt_ids, lead=BOS_ID, tail=None))
        batch["tgt_out"] = torch.from_numpy(_pad(tgt_ids, lead=None, tail=EOS_ID))
    return batch


def _pad(rows: Sequence[Sequence[int]], lead: int | None, tail: int | None) -> np.ndarray:
    """[B, max_len + 1] int64: optional `lead` id, the row, optional `tail` id, then PAD."""
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lens.max(initial=0)) + 1
    out = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    offset = 0 if lead is None else 1
    if lens.sum():
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        # Row-major boolean assignment fills each row's first len(row) slots in order.
        out[:, offset:][np.arange(width - offset) < lens[:, None]] = flat
    if lead is not None:
        out[:, 0] = lead
    if tail is not None:
        out[np.arange(len(rows)), lens] = tail
    return out


# ----------------------------------------------------------------------------- `mtkit data check`


def check_report(cfg: Config, tokenizer: Tokenizer | None) -> str:
    """The text of `mtkit data check`: pairs per split, training drops by reason, length
    percentiles per side, and (with a tokenizer) character coverage and unknown-piece rate.

    Without a tokenizer, lengths (and so the max_len filter) are counted in whitespace words.
    """
    data = cfg.data
    run_dir = Path(cfg.run_dir)
    cache = run_dir / "cache" if run_dir.is_dir() else None  # a check does not create the run dir
    unit = "tokens" if tokenizer is not None else "words"
    out = [f"data check: {data.src_lang} -> {data.tgt_lang}, lengths in {unit}"
           + ("" if tokenizer is not None else " (no tokenizer trained yet)")]
    if tokenizer is not None:
        kind = "joint" if tokenizer.joint else "separate"
        out.append(f"tokenizer: {kind}, {tokenizer.src_vocab_size:,} source / {tokenizer.tgt_vocab_size:,} target pieces")
    for name, split in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        if split is None:
            out.append(f"{name}: not configured")
            continue
        ds = load_pairs(split, data, name, cache)
        out.append(f"{name}: {len(ds):,} pairs from {_describe(split)}")
        if tokenizer is not None:
            ds = encode_pairs(ds, tokenizer, data.num_proc)
            src, tgt = token_lengths(ds)
        else:
            src, tgt = _word_lengths(ds, "src"), _word_lengths(ds, "tgt")
        if name == "train":
            report, _ = _drop_counts(src, tgt, data.max_len, data.max_len_ratio)
            out.append(f"  filter (max_len {data.max_len} {unit}, max_len_ratio {data.max_len_ratio}): {report.format()}")
        for side, lens in (("src", src), ("tgt", tgt)):
            p50, p90, p99 = (int(v) for v in np.percentile(lens, [50, 90, 99], method="higher"))
            out.append(f"  {side} length: p50 {p50}  p90 {p90}  p99 {p99}  max {int(lens.max())}")
        if tokenizer is not None:
            out.append("  " + _coverage_line(ds, tokenizer))
    return "\n".join(out)


def _describe(split: SplitConfig) -> str:
    if split.src:
        return f"{Path(split.src).resolve()} + {Path(split.tgt).resolve()}"
    if split.path:
        return str(Path(split.path).resolve())
    return f"hub {split.hub}" + (f" ({split.hub_config})" if split.hub_config else "") + f" split {split.split}"


def _word_lengths(ds: datasets.Dataset, column: str) -> np.ndarray:
    """Whitespace words per row, in Arrow, 50k rows at a time (the split words are not kept)."""
    import pyarrow.compute as pc

    out = []
    for table in ds.select_columns([column]).with_format("arrow").iter(batch_size=50_000):
        text = pc.utf8_trim_whitespace(table.column(column))
        # Arrow splits "" into [""], so an empty text would count as one word.
        words = pc.list_value_length(pc.utf8_split_whitespace(text)).to_numpy(zero_copy_only=False)
        out.append(np.where(pc.equal(text, "").to_numpy(zero_copy_only=False), 0, words))
    return np.concatenate(out).astype(np.int64)


def _coverage_line(ds: datasets.Dataset, tokenizer: Tokenizer, sample: int = 100_000) -> str:
    """Character coverage (share of character occurrences the vocabulary knows) and the share of
    pieces that are <unk>, per side, on the first `sample` pairs."""
    import pyarrow.compute as pc

    part = ds.select(range(min(sample, len(ds)))).with_format("arrow")
    parts = []
    for side, encode in (("src", tokenizer.encode_src), ("tgt", tokenizer.encode_tgt)):
        counts: Counter[str] = Counter()
        for text in part[side].to_pylist():
            counts.update(text)
        chars = list(counts)
        unknown = {c for c, ids in zip(chars, encode(chars), strict=True) if UNK_ID in ids}
        total = sum(counts.values()) or 1
        covered = 1 - sum(counts[c] for c in unknown) / total
        pieces = pc.list_flatten(part[f"{side}_ids"])
        unk_rate = pc.sum(pc.equal(pieces, UNK_ID)).as_py() or 0
        parts.append(f"{side} coverage {covered:.4%}, unknown pieces {unk_rate / max(len(pieces), 1):.4%}")
    return "; ".join(parts) + f" (first {len(part):,} pairs)"


# ----------------------------------------------------------------------------- reading text files


def _scan_text(path: Path, key: str) -> int:
    """Check a text file completely (UTF-8, no NUL bytes) and return its number of lines.

    Fast: whole chunks are decoded at once; only a failing chunk is searched for the line.
    """
    where = f"{key}: {path.resolve()}"
    if not path.exists():
        raise DataError(f"{where}: file not found")
    if path.is_dir():
        raise DataError(f"{where}: is a directory; give a file with one sentence per line")
    lines = 0
    for first, chunk in _line_chunks(path, where):
        nul = chunk.find(b"\0")
        if nul >= 0:
            line = first + chunk.count(b"\n", 0, nul)
            raise DataError(f"{where}: line {line}: NUL byte, this looks like a binary file, not text")
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            line = first + chunk.count(b"\n", 0, e.start)
            column = e.start - (chunk.rfind(b"\n", 0, e.start) + 1) + 1
            raise DataError(
                f"{where}: line {line}, byte {column}: not valid UTF-8 (0x{chunk[e.start]:02x});"
                " convert the file, e.g. iconv -f latin1 -t utf-8"
            ) from None
        lines += chunk.count(b"\n") + (not chunk.endswith(b"\n"))
    return lines


def _line_chunks(path: Path, where: str) -> Iterator[tuple[int, bytes]]:
    """(number of the first line, bytes of whole lines) for `path`, gzip-decompressed if .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            first, pending = 1, []
            while block := f.read(READ_CHUNK):
                cut = block.rfind(b"\n") + 1
                if cut == 0:  # no line end yet (a very long line): keep collecting
                    pending.append(block)
                    continue
                chunk = b"".join([*pending, block[:cut]])
                pending = [block[cut:]]
                yield first, chunk
                first += chunk.count(b"\n")
            tail = b"".join(pending)
            if tail:
                yield first, tail
    except (OSError, EOFError, zlib.error) as e:  # includes gzip.BadGzipFile and truncated files
        raise DataError(f"{where}: cannot read ({_short(e)})") from e


def _lines(path: Path) -> Iterator[str]:
    """Decoded lines without their line end ("\\n" or "\\r\\n"); the file was checked by _scan_text."""
    for _, chunk in _line_chunks(path, str(path)):
        lines = chunk.decode("utf-8").split("\n")
        if chunk.endswith(b"\n"):
            lines.pop()
        for line in lines:
            yield line[:-1] if line.endswith("\r") else line


def _pair_rows(src: Path, tgt: Path, key: str) -> Iterator[tuple[str, str]]:
    try:
        yield from zip(_lines(src), _lines(tgt), strict=True)
    except ValueError:  # the line counts were equal when checked
        raise DataError(f"{key}: {src.resolve()} or {tgt.resolve()} changed while being read; try again") from None


def _table_header(path: Path, suffix: str) -> list[str]:
    first = next(_lines(path), "")
    header = first.split("\t") if suffix == ".tsv" else next(csv.reader([first]), [])
    return [h.strip() for h in header]


def _table_rows(path: Path, where: str, src_field: str, tgt_field: str) -> Iterator[tuple[str, str]]:
    """TSV: raw tab-separated fields (quotes are text, as in MT corpora); CSV: standard quoting."""
    with contextlib.ExitStack() as stack:
        if _suffix(path) == ".tsv":
            rows: Iterator[tuple[int, list[str]]] = enumerate((t.split("\t") for t in _lines(path)), 1)
        else:
            binary = stack.enter_context(gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb"))
            stream = stack.enter_context(io.TextIOWrapper(binary, encoding="utf-8", newline=""))
            csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a 1 MB line is data, not an error
            reader = csv.reader(stream)
            rows = ((reader.line_num, row) for row in reader)  # physical line: quoted fields span lines
        header: list[str] = []
        line = 0
        try:
            for line, row in rows:
                if not header:
                    header = [h.strip() for h in row]
                    i, j = header.index(src_field), header.index(tgt_field)  # checked by the caller
                    continue
                if row == [] or row == [""]:
                    continue  # a blank line, e.g. at the end of the file
                if len(row) != len(header):
                    raise DataError(
                        f"{where}: line {line}: {len(row)} fields, the header has {len(header)};"
                        " check for stray tab/comma characters or broken quoting"
                    )
                yield row[i], row[j]
        except csv.Error as e:
            raise DataError(f"{where}: line {line + 1}: {e}") from None


def _jsonl_rows(path: Path, where: str, src_field: str, tgt_field: str) -> Iterator[tuple[str, str]]:
    """JSON Lines: {"de": ..., "en": ...} or {"translation": {"de": ..., "en": ...}} per line."""
    for line, text in enumerate(_lines(path), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = getattr(e, "msg", "nested too deeply")
            raise DataError(
                f"{where}: line {line}: not valid JSON ({msg}); each line must be one object like"
                f' {{"{src_field}": "...", "{tgt_field}": "..."}}'
            ) from None
        yield _pair_from_record(record, src_field, tgt_field, f"{where}: line {line}")


def _stream_rows(stream, where: str, src_field: str, tgt_field: str) -> Iterator[tuple[str, str]]:
    n = 0
    try:
        for n, record in enumerate(stream, 1):
            yield _pair_from_record(record, src_field, tgt_field, f"{where}: example {n}")
    except MtkitError:
        raise
    except Exception as e:  # noqa: BLE001 - a dropped connection or a bad shard, mid-stream
        raise DataError(f"{where}: streaming stopped after {n} examples ({_short(e)})") from e


def _pair_from_record(record: Any, src_field: str, tgt_field: str, where: str) -> tuple[str, str]:
    if isinstance(record, dict) and isinstance(record.get("translation"), dict) and src_field not in record:
        record = record["translation"]
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with keys {src_field!r} and {tgt_field!r}")
    for field in (src_field, tgt_field):
        if field not in record:
            keys = ", ".join(map(repr, record)) or "none"
            raise DataError(
                f"{where}: no key {field!r} (it has {keys}); set data.src_lang/tgt_lang or src_field/tgt_field"
            )
        if not isinstance(record[field], str):
            raise DataError(f"{where}: {field!r} is {type(record[field]).__name__}, expected text")
    return record[src_field], record[tgt_field]


def _stamp(*paths: Path) -> str:
    """Absolute path, size and mtime of each file: changes whenever a file is edited."""
    parts = []
    for p in paths:
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _suffix(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1:
        return suffixes[-2].lower()
    return path.suffix.lower()


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _quiet_datasets() -> None:
    """datasets' progress bars only on a terminal (logs and CI stay readable)."""
    import sys

    import datasets

    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
