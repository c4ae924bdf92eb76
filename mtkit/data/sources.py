"""Sentence-pair sources: read any corpus format into a Hugging Face `datasets` table.

Plain-text file pairs (also .gz), one .tsv/.csv/.jsonl/.parquet file, a folder written by
`save_to_disk`, or a Hub dataset each become an Arrow-backed Dataset with "src" and "tgt"
columns, checked before anything expensive (missing files, line counts, UTF-8, columns). It does
not encode, filter or batch (pairs.py and batching.py do).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from mtkit import files
from mtkit.config import DataConfig, SplitConfig
from mtkit.configcheck import corpus_key
from mtkit.data import readers
from mtkit.errors import ConfigError, DataError
from mtkit.memory import release_freed_memory

log = logging.getLogger("mtkit")

READER_VERSION = "1"  # part of every cache key; bump when the readers' output changes
WRITE_BATCH = 20_000  # pairs per Arrow record batch written to the cache
TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")


# ----------------------------------------------------------------------------- checking


def check_data_files(data: DataConfig) -> None:
    """Every file and folder the data section names (each training corpus, valid, test) exists and
    can be opened: run before any work, so a wrong path fails in a second and not after tokenizer
    training. Contents are checked when a split is read (load_pairs); hub datasets when loaded."""
    if not data.train:
        raise ConfigError("data.train: no training corpus; give one ({src: ..., tgt: ...}, a path or a hub dataset)"
                          " or a list of them")
    named = [(corpus_key(data.train, i), c) for i, c in enumerate(data.train)]
    named += [(f"data.{name}", s) for name, s in (("valid", data.valid), ("test", data.test)) if s is not None]
    for key, split in named:
        for field in ("src", "tgt", "path"):
            if (value := getattr(split, field)) is not None:
                readers.check_readable(Path(value), f"{key}.{field}", folder_ok=field == "path")


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
    src_lines = readers.scan_text(src, f"{key}.src")
    tgt_lines = readers.scan_text(tgt, f"{key}.tgt")
    if src_lines != tgt_lines:
        raise DataError(
            f"{key}: {src.resolve()} has {src_lines} lines but {tgt.resolve()} has {tgt_lines};"
            " the files must be line-aligned (line i of one translates line i of the other)"
        )
    if src_lines == 0:
        raise DataError(f"{key}.src: {src.resolve()}: is empty; give files with one sentence per line")
    return _materialise(readers.pair_rows(src, tgt, key), name, cache, f"{key}: {src.resolve()}", key=_stamp(src, tgt))


def _load_path(
    path: Path, split: SplitConfig, src_field: str, tgt_field: str, key: str, name: str, cache: str | None
) -> datasets.Dataset:
    """One table file or a save_to_disk folder -> pairs."""
    where = f"{key}: {path.resolve()}"
    if not path.exists():
        raise DataError(f"{where}: not found")
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - anything from a foreign folder is the user's data problem
            if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
                raise DataError(f"{where}: cannot read this save_to_disk folder ({readers.short_error(e)});"
                                " is it empty or damaged?") from e
            raise DataError(
                f"{where}: a folder, but not one written by Dataset.save_to_disk ({readers.short_error(e)});"
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
    suffix = readers.format_suffix(path)
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"{where}: unknown file type {suffix or '(none)'}; expected .tsv, .csv, .jsonl or .parquet"
            " (optionally .gz), or use src+tgt for two plain-text files"
        )
    if suffix == ".parquet":
        return _load_parquet(path, src_field, tgt_field, where, cache)
    lines = readers.scan_text(path, key)
    if lines == 0:
        raise DataError(f"{where}: the file is empty")
    if suffix in (".tsv", ".csv"):
        header = readers.table_header(path, suffix)
        missing = [f for f in (src_field, tgt_field) if f not in header]
        if missing:
            raise DataError(
                f"{where}: header has no column {', '.join(map(repr, missing))}; its columns are"
                f" {', '.join(map(repr, header))}; set {key.rsplit('.', 1)[0]}.src_field/tgt_field"
            )
        rows = readers.table_rows(path, where, src_field, tgt_field)
    else:
        rows = readers.jsonl_rows(path, where, src_field, tgt_field)
    return _materialise(rows, name, cache, where, key=f"{_stamp(path)}|{src_field}|{tgt_field}")


def _load_parquet(path: Path, src_field: str, tgt_field: str, where: str, cache: str | None) -> datasets.Dataset:
    try:
        meta = pq.read_metadata(path)
        names = meta.schema.to_arrow_schema().names
    except Exception as e:  # noqa: BLE001 - a corrupt file raises ArrowInvalid, OSError, ...
        raise DataError(f"{where}: not a readable Parquet file ({readers.short_error(e)})") from e
    columns = _pick_columns(names, src_field, tgt_field, where)
    if meta.num_rows == 0:
        raise DataError(f"{where}: no sentence pairs in it")
    try:
        ds = datasets.Dataset.from_parquet(str(path.resolve()), columns=columns, cache_dir=cache)
    except Exception as e:  # noqa: BLE001 - a damaged row group surfaces only here
        raise DataError(f"{where}: cannot read ({readers.short_error(e)})") from e
    return _select_pair_columns(ds, src_field, tgt_field, where)


def _load_hub(split: SplitConfig, src_field: str, tgt_field: str, key: str, name: str, cache: str | None):
    """A Hub dataset: from here on it is handled exactly like a local save_to_disk folder."""
    where = f"{key}: {split.hub}" + (f" ({split.hub_config})" if split.hub_config else "") + f" split {split.split!r}"
    try:
        ds = datasets.load_dataset(
            split.hub, split.hub_config, split=split.split, streaming=split.streaming, cache_dir=cache
        )
    except Exception as e:  # noqa: BLE001 - network, unknown names and bad configs all land here
        raise DataError(f"{where}: cannot load ({readers.short_error(e)});"
                        " check the name, hub_config, split and network") from e
    if isinstance(ds, datasets.IterableDataset):
        # Streaming train sets are read once into the Arrow cache: batching needs random access.
        # (Hub datasets are versioned, so the cache key is the name: a new revision needs a new run.)
        rows = readers.stream_rows(ds, where, src_field, tgt_field)
        return _materialise(rows, name, cache, where, key=f"hub|{where}|{src_field}|{tgt_field}")
    return _select_pair_columns(ds, src_field, tgt_field, where)


def _materialise(rows: Iterator[tuple[str, str]], name: str, cache: str | None, where: str, key: str):
    """Write (src, tgt) rows once into an Arrow file in the cache and memory-map it.

    Like `Dataset.from_generator`, but written in batches (about 10x faster on 366k pairs) and
    keyed by `key`, which holds each file's absolute path, size and mtime: an edited file gets a
    new cache file and is never served stale.
    """
    folder = Path(cache if cache is not None else datasets.config.HF_DATASETS_CACHE) / "mtkit-pairs"
    path = folder / f"{name}-{hashlib.sha256(f'{READER_VERSION}|{key}'.encode()).hexdigest()[:32]}.arrow"
    if not path.is_file():
        schema = pa.schema([("src", pa.string()), ("tgt", pa.string())])
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with files.replacing(path) as sink, pa.ipc.new_stream(sink, schema) as writer:
                total = 0
                while batch := list(itertools.islice(rows, WRITE_BATCH)):
                    total += len(batch)
                    src, tgt = zip(*batch, strict=True)
                    writer.write_table(pa.table([pa.array(src, pa.string()), pa.array(tgt, pa.string())], schema=schema))
                if total == 0:
                    raise DataError(f"{where}: no sentence pairs in it")
        except OSError as e:
            raise DataError(f"{where}: cannot write the data cache in {folder} ({e}); free disk space"
                            " or choose a writable run_dir") from e
        # The rows passed through as Python strings: give the freed heap back (150 MB at 4.5M pairs)
        # before tokenizer training, and before encoding workers are forked with it.
        release_freed_memory()
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
            f"{where}: its 'translation' entries have languages {', '.join(sorted(langs))}, not both"
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


def _stamp(*paths: Path) -> str:
    """Absolute path, size and mtime of each file: changes whenever a file is edited."""
    parts = []
    for p in paths:
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _quiet_datasets() -> None:
    """datasets' progress bars only on a terminal (logs and CI stay readable)."""
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
