"""The data stage (sources, pairs, padding, upsample, check): every source format, every user error, encoding, filtering, make_batch, data check."""

from __future__ import annotations

import gzip
import json
import os
import random
import re

import datasets
import numpy as np
import pytest
import torch

from mtkit.config import Config, DataConfig, SplitConfig
from mtkit.data.check import check_report
from mtkit.data.padding import make_batch
from mtkit.data.pairs import (
    DropReport,
    encode_pairs,
    filter_train,
    prepare_eval,
    prepare_train,
    select_rows,
    table_rows,
    token_lengths,
)
from mtkit.data.sources import load_pairs
from mtkit.data.upsample import source_matches, upsample_index
from mtkit.errors import DataError, MtkitError
from tests.conftest import DE_EN, reverse_pairs, write_pairs

PAIRS = [("Hallo Welt.", "Hello world."), ("Guten Morgen!", "Good morning!"), ("Danke, „gut“.", 'Thanks, "fine".')]


def load(split: SplitConfig, tmp_path, name: str = "train", **data_kw) -> datasets.Dataset:
    return load_pairs(split, DataConfig(train=split, **data_kw), name, tmp_path / "cache")


def rows(ds) -> list[tuple[str, str]]:
    return list(zip(ds["src"], ds["tgt"], strict=True))


# ----------------------------------------------------------------------------- sources


def test_plain_file_pair(tmp_path):
    src, tgt = write_pairs(tmp_path / "a.de", tmp_path / "a.en", PAIRS)
    ds = load(SplitConfig(src=str(src), tgt=str(tgt)), tmp_path)
    assert ds.column_names == ["src", "tgt"] and rows(ds) == PAIRS
    assert ds.cache_files, "plain-text pairs must be Arrow-backed (memory-mapped) files"


def test_crlf_missing_final_newline_and_blank_lines_keep_alignment(tmp_path):
    (tmp_path / "a.de").write_bytes(b"eins\r\n\r\ndrei")
    (tmp_path / "a.en").write_bytes(b"one\n\nthree")
    ds = load(SplitConfig(src=str(tmp_path / "a.de"), tgt=str(tmp_path / "a.en")), tmp_path)
    assert rows(ds) == [("eins", "one"), ("", ""), ("drei", "three")]


def test_gzip_file_pair(tmp_path):
    for name, side in (("a.de.gz", 0), ("a.en.gz", 1)):
        with gzip.open(tmp_path / name, "wt", encoding="utf-8") as f:
            f.writelines(p[side] + "\n" for p in PAIRS)
    ds = load(SplitConfig(src=str(tmp_path / "a.de.gz"), tgt=str(tmp_path / "a.en.gz")), tmp_path)
    assert rows(ds) == PAIRS


def test_tsv_keeps_quotes_and_ignores_other_columns(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("id\tde\ten\n" + "".join(f"{i}\t{a}\t{b}\n" for i, (a, b) in enumerate(PAIRS)), encoding="utf-8")
    assert rows(load(SplitConfig(path=str(path)), tmp_path)) == PAIRS


def test_csv_with_quoting_and_field_overrides(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('source,target\n"Hallo, Welt.","Hello, world."\nJa,"Say ""yes""."\n', encoding="utf-8")
    ds = load(SplitConfig(path=str(path), src_field="source", tgt_field="target"), tmp_path)
    assert rows(ds) == [("Hallo, Welt.", "Hello, world."), ("Ja", 'Say "yes".')]


@pytest.mark.parametrize("nested", [False, True])
def test_jsonl_flat_and_translation_nested(tmp_path, nested):
    path = tmp_path / "pairs.jsonl"
    records = [{"translation": {"de": a, "en": b}} if nested else {"de": a, "en": b, "id": 1} for a, b in PAIRS]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "\n", encoding="utf-8")
    assert rows(load(SplitConfig(path=str(path)), tmp_path)) == PAIRS


@pytest.mark.parametrize("nested", [False, True])
def test_parquet_flat_and_nested(tmp_path, nested):
    if nested:
        table = {"translation": [{"de": a, "en": b} for a, b in PAIRS]}
    else:
        table = {"en": [b for _, b in PAIRS], "de": [a for a, _ in PAIRS], "n": [1, 2, 3]}
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "p.parquet"))
    assert rows(load(SplitConfig(path=str(tmp_path / "p.parquet")), tmp_path)) == PAIRS


def test_save_to_disk_dataset_and_datasetdict_split(tmp_path):
    one = datasets.Dataset.from_dict({"translation": [{"de": a, "en": b} for a, b in PAIRS]})
    one.save_to_disk(str(tmp_path / "one"))
    assert rows(load(SplitConfig(path=str(tmp_path / "one")), tmp_path)) == PAIRS

    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})
    hub_style = datasets.Dataset.from_dict({"translation": [{"de": "Ja.", "en": "Yes."}]}, features=features)
    hub_style.save_to_disk(str(tmp_path / "hub_style"))
    assert rows(load(SplitConfig(path=str(tmp_path / "hub_style")), tmp_path)) == [("Ja.", "Yes.")]
    with pytest.raises(DataError, match="'translation' entries have languages de, en, not both 'fr' and 'en'"):
        load(SplitConfig(path=str(tmp_path / "hub_style")), tmp_path, src_lang="fr")

    dev = datasets.Dataset.from_dict({"de": ["Ja."], "en": ["Yes."]})
    datasets.DatasetDict({"train": one, "validation": dev}).save_to_disk(str(tmp_path / "dict"))
    got = load(SplitConfig(path=str(tmp_path / "dict"), split="validation"), tmp_path, name="valid")
    assert rows(got) == [("Ja.", "Yes.")]
    with pytest.raises(DataError, match=r"has splits train, validation but not 'test'.*data.train.split"):
        load(SplitConfig(path=str(tmp_path / "dict"), split="test"), tmp_path)


def test_hub_goes_through_load_dataset_and_streaming_is_materialised(tmp_path, monkeypatch):
    saved = datasets.Dataset.from_dict({"translation": [{"de": a, "en": b} for a, b in PAIRS]})
    calls = []

    def fake_load_dataset(name, config, split, streaming, cache_dir):
        calls.append((name, config, split, streaming))
        return saved.to_iterable_dataset() if streaming else saved

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert rows(load(SplitConfig(hub="wmt14", hub_config="de-en"), tmp_path)) == PAIRS
    streamed = load(SplitConfig(hub="wmt14", hub_config="de-en", split="validation", streaming=True), tmp_path)
    assert rows(streamed) == PAIRS and streamed.cache_files
    assert calls == [("wmt14", "de-en", "train", False), ("wmt14", "de-en", "validation", True)]

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"data.train.hub: wmt14 \(de-en\) split 'train': cannot load .*no network"):
        load(SplitConfig(hub="wmt14", hub_config="de-en"), tmp_path)


def test_null_texts_become_empty_strings_with_a_warning(tmp_path, caplog):
    datasets.Dataset.from_dict({"de": ["Ja", None], "en": [None, "No"]}).to_parquet(str(tmp_path / "p.parquet"))
    ds = load(SplitConfig(path=str(tmp_path / "p.parquet")), tmp_path)
    assert rows(ds) == [("Ja", ""), ("", "No")]
    assert "2 missing (null) texts read as empty strings" in caplog.text


def test_language_codes_are_the_default_columns(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("fr\tit\nOui.\tSì.\n", encoding="utf-8")
    ds = load(SplitConfig(path=str(path)), tmp_path, src_lang="fr", tgt_lang="it")
    assert rows(ds) == [("Oui.", "Sì.")]


# ----------------------------------------------------------------------------- errors


def test_missing_file_names_key_and_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_pairs(tmp_path / "a.de", tmp_path / "a.en", PAIRS)
    with pytest.raises(DataError) as e:
        load(SplitConfig(src="a.de", tgt="nope.en"), tmp_path)
    assert str(e.value) == f"data.train.tgt: {tmp_path / 'nope.en'}: file not found"
    with pytest.raises(DataError, match=f"data.train.path: {tmp_path / 'x.tsv'}: not found"):
        load(SplitConfig(path="x.tsv"), tmp_path)


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "d").mkdir()
    write_pairs(tmp_path / "a.de", tmp_path / "a.en", PAIRS)
    with pytest.raises(DataError, match=f"data.train.src: {tmp_path / 'd'}: is a directory"):
        load(SplitConfig(src=str(tmp_path / "d"), tgt=str(tmp_path / "a.en")), tmp_path)
    with pytest.raises(DataError, match="not one written by Dataset.save_to_disk"):
        load(SplitConfig(path=str(tmp_path / "d")), tmp_path)


def test_line_counts_differ_names_both_files_and_counts(tmp_path):
    src, tgt = write_pairs(tmp_path / "a.de", tmp_path / "a.en", PAIRS)
    tgt.write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load(SplitConfig(src=str(src), tgt=str(tgt)), tmp_path, name="valid")
    assert f"data.valid: {src} has 3 lines but {tgt} has 2" in str(e.value)


def test_invalid_utf8_names_file_and_line(tmp_path):
    src, tgt = write_pairs(tmp_path / "a.de", tmp_path / "a.en", PAIRS)
    src.write_bytes(b"gut\nsch\xf6n\nja\n")  # Latin-1, not UTF-8
    with pytest.raises(DataError, match=f"data.train.src: {src}: line 2, byte 4: not valid UTF-8"):
        load(SplitConfig(src=str(src), tgt=str(tgt)), tmp_path)


def test_nul_bytes_are_a_binary_file(tmp_path):
    src, tgt = write_pairs(tmp_path / "a.de", tmp_path / "a.en", PAIRS)
    tgt.write_bytes(b"one\ntwo\nthr\x00ee\n")
    with pytest.raises(DataError, match=f"data.train.tgt: {tgt}: line 3: NUL byte, this looks like a binary"):
        load(SplitConfig(src=str(src), tgt=str(tgt)), tmp_path)


def test_empty_files_and_empty_tables(tmp_path):
    src, tgt = write_pairs(tmp_path / "a.de", tmp_path / "a.en", [])
    with pytest.raises(DataError, match=f"{src}: is empty"):
        load(SplitConfig(src=str(src), tgt=str(tgt)), tmp_path)
    (tmp_path / "h.tsv").write_text("de\ten\n", encoding="utf-8")
    with pytest.raises(DataError, match="no sentence pairs"):
        load(SplitConfig(path=str(tmp_path / "h.tsv")), tmp_path)
    empty = datasets.Dataset.from_dict({"de": [], "en": []}, features=datasets.Features(
        {"de": datasets.Value("string"), "en": datasets.Value("string")}))
    empty.to_parquet(str(tmp_path / "e.parquet"))
    with pytest.raises(DataError, match="no sentence pairs"):
        load(SplitConfig(path=str(tmp_path / "e.parquet")), tmp_path)
    empty.save_to_disk(str(tmp_path / "e"))  # datasets itself cannot load this one back
    with pytest.raises(DataError, match=r"/e: (no sentence pairs|cannot read this save_to_disk folder)"):
        load(SplitConfig(path=str(tmp_path / "e")), tmp_path)


def test_tsv_missing_column_lists_the_columns(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("german\tenglish\nJa\tYes\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load(SplitConfig(path=str(path)), tmp_path)
    assert f"data.train.path: {path}: header has no column 'de', 'en'; its columns are 'german', 'english'" in str(e.value)


def test_tsv_row_with_wrong_field_count_names_the_line(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("de\ten\nJa\tYes\nNein\tNo\textra\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}: line 3: 3 fields, the header has 2"):
        load(SplitConfig(path=str(path)), tmp_path)


def test_jsonl_bad_line_and_missing_key_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"de": "Ja", "en": "Yes"}\n{"de": "Nein", "en": \n', encoding="utf-8")
    with pytest.raises(DataError, match=f"data.train.path: {path}: line 2: not valid JSON"):
        load(SplitConfig(path=str(path)), tmp_path)
    path.write_text('{"de": "Ja", "en": "Yes"}\n\n{"de": "Nein", "english": "No"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}: line 3: no key 'en' \\(it has 'de', 'english'\\)"):
        load(SplitConfig(path=str(path)), tmp_path)
    path.write_text('{"de": "Ja", "en": 5}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: 'en' is int, expected text"):
        load(SplitConfig(path=str(path)), tmp_path)


def test_parquet_and_disk_columns_checked(tmp_path):
    datasets.Dataset.from_dict({"a": ["x"], "b": ["y"]}).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(DataError, match="no column 'de' and 'en'; it has columns 'a', 'b'"):
        load(SplitConfig(path=str(tmp_path / "p.parquet")), tmp_path)
    datasets.Dataset.from_dict({"translation": [{"fr": "Oui", "en": "Yes"}]}).save_to_disk(str(tmp_path / "t"))
    with pytest.raises(DataError, match="'translation' entries have languages en, fr"):  # sorted
        load(SplitConfig(path=str(tmp_path / "t")), tmp_path)
    datasets.Dataset.from_dict({"de": [1], "en": ["one"]}).save_to_disk(str(tmp_path / "n"))
    with pytest.raises(DataError, match="column 'de' holds .*int64.*, expected text"):
        load(SplitConfig(path=str(tmp_path / "n")), tmp_path)


def test_corrupt_files(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load(SplitConfig(path=str(tmp_path / "bad.parquet")), tmp_path)
    (tmp_path / "a.de.gz").write_bytes(b"not gzip at all")
    (tmp_path / "a.en").write_text("x\n", encoding="utf-8")
    with pytest.raises(DataError, match="cannot read"):
        load(SplitConfig(src=str(tmp_path / "a.de.gz"), tgt=str(tmp_path / "a.en")), tmp_path)
    (tmp_path / "x.xlsx").write_text("?", encoding="utf-8")
    with pytest.raises(DataError, match=r"unknown file type .xlsx; expected .tsv, .csv, .jsonl or .parquet"):
        load(SplitConfig(path=str(tmp_path / "x.xlsx")), tmp_path)


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl", ".de"])
def test_random_bytes_give_success_or_a_data_error(tmp_path, suffix):
    rng = random.Random(suffix)
    for i in range(6):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        if i % 2:  # mostly printable, to get past the UTF-8 check into the parsers
            blob = bytes(b for b in blob if 32 <= b < 127 or b in b"\n\t,\"{}:")
        path = tmp_path / f"f{i}{suffix}"
        path.write_bytes(blob)
        split = SplitConfig(src=str(path), tgt=str(path)) if suffix == ".de" else SplitConfig(path=str(path))
        try:
            load(split, tmp_path)
        except MtkitError:
            pass


def test_megabyte_line_loads_and_is_dropped_by_max_len(tmp_path, tiny_tokenizer):
    pairs = [("kurz", "short"), ("lang " * 200_000, "long"), *DE_EN]
    src, tgt = write_pairs(tmp_path / "a.de", tmp_path / "a.en", pairs)
    data = DataConfig(train=SplitConfig(src=str(src), tgt=str(tgt)), max_len=64, max_len_ratio=1000.0)
    train = prepare_train(data, tiny_tokenizer, tmp_path / "cache")
    ds, (report,) = train.ds, train.reports
    assert report.too_long == 1 and report.kept == len(pairs) - 1
    assert "lang lang" not in "".join(ds["src"])
    (tmp_path / "big.csv").write_text(f"de,en\nkurz,short\n{'lang ' * 200_000},long\n", encoding="utf-8")
    assert len(load(SplitConfig(path=str(tmp_path / "big.csv")), tmp_path)) == 2


def test_edited_file_is_never_served_stale_from_cache(tmp_path):
    src, tgt = write_pairs(tmp_path / "a.de", tmp_path / "a.en", PAIRS)
    split = SplitConfig(src=str(src), tgt=str(tgt))
    first = load(split, tmp_path)
    assert load(split, tmp_path).cache_files == first.cache_files  # unchanged: reused
    src.write_text("Hallo Welt!\nGuten Abend!\nBitte, „gut“.\n", encoding="utf-8")  # same size
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 1_000_000))
    assert load(split, tmp_path)["src"][1] == "Guten Abend!"
    tgt.write_text("Hello there.\nGood morning!\nOK.\n", encoding="utf-8")  # other size
    assert load(split, tmp_path)["tgt"][0] == "Hello there."


# ----------------------------------------------------------------------------- encode, filter, batch


def test_encode_pairs_adds_int32_ids(tmp_path, tiny_tokenizer, de_en_files):
    src, tgt = de_en_files
    ds = encode_pairs(load(SplitConfig(src=str(src), tgt=str(tgt)), tmp_path), tiny_tokenizer, None)
    assert ds.column_names == ["src", "tgt", "src_ids", "tgt_ids"]
    assert ds.features["src_ids"].feature.dtype == "int32"
    assert ds["src_ids"][0] == tiny_tokenizer.encode_src([DE_EN[0][0]])[0]
    assert ds["tgt_ids"][-1] == tiny_tokenizer.encode_tgt([DE_EN[-1][1]])[0]


def test_another_tokenizer_never_reuses_a_cached_encoding(tmp_path, tiny_tokenizer, de_en_files):
    from mtkit.config import TokenizerConfig
    from mtkit.data.tokenizer_training import train_tokenizer

    src, tgt = de_en_files
    ds = load(SplitConfig(src=str(src), tgt=str(tgt)), tmp_path)
    other = train_tokenizer(TokenizerConfig(vocab_size=70, model_type="bpe"), ds["src"], ds["tgt"])
    first, second = encode_pairs(ds, tiny_tokenizer, 1), encode_pairs(ds, other, 1)
    assert second["src_ids"] == other.encode_src(ds["src"]) != first["src_ids"]
    assert encode_pairs(ds, tiny_tokenizer, 1).cache_files == first.cache_files  # same one: reused


def test_encode_pairs_in_worker_processes(tmp_path, tiny_tokenizer, reverse_corpus):
    src, tgt = reverse_corpus(n=60)
    ds = load(SplitConfig(src=str(src), tgt=str(tgt)), tmp_path)
    one, two = encode_pairs(ds, tiny_tokenizer, 1), encode_pairs(ds, tiny_tokenizer, 2)
    assert one["src_ids"] == two["src_ids"] and one["tgt_ids"] == two["tgt_ids"]


def test_filter_counts_by_reason_in_order():
    def ids(n):
        return [7] * n

    lens = [  # (src, tgt) -> reason
        (0, 5),  # empty
        (0, 50),  # empty wins over too long
        (11, 3),  # too long (max_len 10)
        (2, 11),  # too long wins over ratio
        (1, 4),  # ratio 4 > 3
        (9, 3),  # ratio 3: kept
        (5, 5),  # kept
        (10, 10),  # kept (== max_len)
    ]
    ds = datasets.Dataset.from_dict({"src_ids": [ids(a) for a, _ in lens], "tgt_ids": [ids(b) for _, b in lens]})
    kept, report = filter_train(ds, max_len=10, max_len_ratio=3.0)
    assert report == DropReport(total=8, empty=2, too_long=2, bad_ratio=1, kept=3)
    assert [len(x) for x in kept["src_ids"]] == [9, 5, 10]
    assert [a.tolist() for a in token_lengths(kept)] == [[9, 5, 10], [3, 5, 10]]
    assert [a.tolist() for a in token_lengths(kept.select([2, 0]))] == [[10, 9], [10, 3]]
    assert report.format() == "8 pairs, kept 3; dropped 2 with an empty side, 2 too long, 1 with a bad length ratio"


def test_select_rows_is_select_without_a_python_list_of_rows(monkeypatch):
    ds = datasets.Dataset.from_dict({"src_ids": [[i] * (i + 1) for i in range(10)], "tgt_ids": [[1]] * 10,
                                     "n": list(range(10))})
    rows = np.array([4, 0, 2])
    views = (ds, ds.select([9, 7, 5, 3, 1, 0]))  # the whole table; an index mapping already
    expected = [(v.select(rows)[:], table_rows(v.select(rows)).tolist()) for v in views]

    def no_select(*args, **kwargs):
        raise AssertionError("datasets' select (its list of Python ints) was used")

    monkeypatch.setattr(datasets.Dataset, "select", no_select)
    for view, (rows_expected, mapping_expected) in zip(views, expected, strict=True):
        picked = select_rows(view, rows)
        assert picked[:] == rows_expected and table_rows(picked).tolist() == mapping_expected
        assert token_lengths(picked)[0].tolist() == [n + 1 for n in picked["n"]]
    assert select_rows(ds, np.array([1, 2]))._fingerprint != select_rows(ds, np.array([1, 3]))._fingerprint
    monkeypatch.undo()  # a formatted view goes through datasets' select: the same rows of the view
    formatted = views[1].with_format("numpy")
    assert list(select_rows(formatted, rows)["n"]) == list(formatted.select(rows)["n"]) == [1, 9, 5]


def test_prepare_train_empty_after_filtering(tmp_path, tiny_tokenizer, de_en_files):
    src, tgt = de_en_files
    data = DataConfig(train=SplitConfig(src=str(src), tgt=str(tgt)), max_len=1)
    with pytest.raises(DataError, match=r"data.train: empty after filtering: 8 pairs, kept 0.*raise data.max_len"):
        prepare_train(data, tiny_tokenizer, tmp_path / "cache")


def test_prepare_eval_keeps_every_line(tmp_path, tiny_tokenizer):
    src, tgt = write_pairs(tmp_path / "d.de", tmp_path / "d.en", [("", "x"), *DE_EN])
    data = DataConfig(valid=SplitConfig(src=str(src), tgt=str(tgt)), max_len=1)
    ds = prepare_eval(data.valid, data, tiny_tokenizer, "valid", tmp_path / "cache")
    assert len(ds) == len(DE_EN) + 1 and ds["src_ids"][0] == []


def test_make_batch_shapes_and_values():
    b = make_batch([[5, 6, 7], [8], []], [[9, 10], [11, 12, 13, 14], [15]])
    assert b["src"].dtype == torch.int64
    assert b["src"].tolist() == [[5, 6, 7, 3], [8, 3, 0, 0], [3, 0, 0, 0]]
    assert b["tgt_in"].tolist() == [[2, 9, 10, 0, 0], [2, 11, 12, 13, 14], [2, 15, 0, 0, 0]]
    assert b["tgt_out"].tolist() == [[9, 10, 3, 0, 0], [11, 12, 13, 14, 3], [15, 3, 0, 0, 0]]
    only = make_batch([np.array([4, 5], dtype=np.int32)])
    assert set(only) == {"src"} and only["src"].tolist() == [[4, 5, 3]]


def test_check_report_with_and_without_tokenizer(tmp_path, tiny_tokenizer):
    train = write_pairs(tmp_path / "t.de", tmp_path / "t.en", [*DE_EN, ("", "leer"), ("a", "b c d e f")])
    dev = write_pairs(tmp_path / "d.de", tmp_path / "d.en", DE_EN[:3])
    data = DataConfig(
        train=SplitConfig(src=str(train[0]), tgt=str(train[1])),
        valid=SplitConfig(src=str(dev[0]), tgt=str(dev[1])),
    )
    cfg = Config(run_dir=str(tmp_path / "run"), data=data)
    words = check_report(cfg, None)
    assert "train: 10 pairs from" in words and "valid: 3 pairs" in words and "test: not configured" in words
    assert "lengths in words" in words
    assert "10 pairs, kept 8; dropped 1 with an empty side, 0 too long, 1 with a bad length ratio" in words
    assert "src length: p50 " in words and "tgt length: p50" in words
    pieces = check_report(cfg, tiny_tokenizer)
    assert "lengths in tokens" in pieces and "src coverage 100.0000%, unknown pieces 0.0000%" in pieces
    assert "upsampling" not in pieces
    # 7 of the 8 kept sources end like a sentence (not „…“); the dropped ("a", ...) does not count
    up = Config(run_dir=cfg.run_dir, data=DataConfig(train=data.train, upsample_pattern=r"[.!?]$|^a$", upsample_factor=3))
    assert "  upsampling: 7 of 8 pairs (a source matching '[.!?]$|^a$') count 3 times: 22 rows per epoch" in check_report(up, tiny_tokenizer)
    everything = Config(run_dir=cfg.run_dir, data=DataConfig(train=data.train, upsample_pattern="", upsample_factor=2))
    assert "  upsampling: 8 of 8 pairs (a source matching '') count 2 times: 16 rows per epoch" in check_report(everything, None)
    assert not (tmp_path / "run").exists()


def test_reverse_corpus_end_to_end(tmp_path, tiny_tokenizer, reverse_corpus):
    src, tgt = reverse_corpus(n=300)
    data = DataConfig(train=SplitConfig(src=str(src), tgt=str(tgt)), max_len=64)
    train = prepare_train(data, tiny_tokenizer, tmp_path / "cache")
    ds, (report,) = train.ds, train.reports
    assert report.total == 300 and report.kept == len(ds) > 250
    expected = reverse_pairs(300)
    first = ds[0]
    assert (first["src"], first["tgt"]) in expected


# ----------------------------------------------------------------------------- upsampling


def test_upsample_index_repeats_long_or_matching_pairs_once_each():
    lens = np.array([3, 12, 5, 10, 1])
    texts = ["Haus", "ein langer Eintrag ohne Punkt", "Wer weiß?", "Das ist ein Satz.", "jdm."]

    def matching(pattern):
        return np.array([re.search(pattern, t) is not None for t in texts])

    assert upsample_index(lens, None, 5).tolist() == [0, 1, 2, 3, 4]  # no criterion: off
    assert upsample_index(lens, 10, 1).tolist() == [0, 1, 2, 3, 4]  # factor 1: off
    assert upsample_index(lens, 10, 3).tolist() == [0, 1, 2, 3, 4, 1, 3, 1, 3]
    # "[.!?]$" takes sentences; "jdm." is 1 token but also ends in ".": a pattern is taken literally
    assert upsample_index(lens, None, 2, matching(r"[.!?]$")).tolist() == [0, 1, 2, 3, 4, 2, 3, 4]
    assert upsample_index(lens, None, 2, matching(r"\w\s.*[.!?]$")).tolist() == [0, 1, 2, 3, 4, 2, 3]
    # either criterion, a pair matching both still counts `factor` times, not more
    assert upsample_index(lens, 10, 2, matching(r"[!?]$")).tolist() == [0, 1, 2, 3, 4, 1, 2, 3]
    with pytest.raises(ValueError, match="pattern matches for 5 pairs"):
        upsample_index(lens, None, 2, matching(r"[.!?]$")[:3])


def test_source_matches_follow_filtering_and_selection_chunk_by_chunk(tmp_path, tiny_tokenizer, de_en_files):
    src, tgt = de_en_files
    ds = encode_pairs(load(SplitConfig(src=str(src), tgt=str(tgt)), tmp_path), tiny_tokenizer, 1)
    pattern = r"[.!?]$"
    expected = np.array([re.search(pattern, s) is not None for s in ds["src"]])
    assert expected.any() and not expected.all()
    for chunk in (1, 2, 50_000):  # rows read a few at a time: the same answer
        assert source_matches(ds, pattern, chunk).tolist() == expected.tolist()
        picked = ds.select([2, 0, 1])  # an index mapping over the Arrow table, as filter_train leaves
        assert source_matches(picked, pattern, chunk).tolist() == expected[[2, 0, 1]].tolist()
