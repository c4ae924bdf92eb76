"""Several training corpora: weights, tags, what each epoch draws, resume, and the copy/reverse mix
that one model learns from them (issue 27, part 1)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mtkit.cli import app
from mtkit.config import CorpusConfig, DataConfig, SplitConfig, load_config
from mtkit.data.mixing import CorpusMix, CorpusSlice, corpus_names, epoch_draws
from mtkit.data.synthetic import write_task
from mtkit.data.upsample import upsample_index
from mtkit.errors import ConfigError
from tests.test_cli import _mtkit, sets
from tests.tinyrun import TINY, same_weights

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def corpora_json(*corpora: dict) -> str:
    return "data.train=" + json.dumps(list(corpora))


def two_corpora(root: Path, n: int = 400) -> list[str]:
    """--set items for a reverse corpus (weight 1) and a copy corpus tagged <copy> (weight 0.5)."""
    write_task(root / "rev", task="reverse", train=n, dev=30, test=200, seed=1)
    write_task(root / "copy", task="copy", train=n, dev=30, test=200, seed=2)
    return [corpora_json({"src": str(root / "rev/train.src"), "tgt": str(root / "rev/train.tgt"), "name": "reverse"},
                         {"src": str(root / "copy/train.src"), "tgt": str(root / "copy/train.tgt"), "weight": 0.5,
                          "tag": "<copy>", "name": "copy"}),
            f"data.valid.src={root / 'rev/dev.src'}", f"data.valid.tgt={root / 'rev/dev.tgt'}"]


# ----------------------------------------------------------------------------- config


def test_one_mapping_is_a_list_of_one_corpus_and_python_callers_still_pass_a_split():
    one = load_config(None, ["data.train.src=a", "data.train.tgt=b"])
    assert one.data.train == (CorpusConfig(src="a", tgt="b"),)
    listed = load_config(None, [corpora_json({"src": "a", "tgt": "b"}, {"path": "c.tsv", "weight": 2, "tag": "<BT>"})])
    assert [c.weight for c in listed.data.train] == [1.0, 2.0] and listed.data.train[1].tag == "<BT>"
    assert DataConfig(train=SplitConfig(src="a", tgt="b")).train == (CorpusConfig(src="a", tgt="b"),)


@pytest.mark.parametrize("entry, message", [
    ({"src": "a", "tgt": "b", "wieght": 2}, "data.train[1].wieght: unknown key; did you mean data.train[1].weight?"),
    ({"src": "a", "tgt": "b", "weight": -1}, "data.train[1].weight: must be > 0 (got -1.0)"),
    ({"src": "a", "tgt": "b", "weight": 0}, "data.train[1].weight: must be > 0 (got 0.0)"),
    ({"src": "a", "tgt": "b", "tag": "<B T>"}, "data.train[1].tag: must be one word without spaces"),
    ({"src": "a", "tgt": "b", "tag": "</s>"}, "data.train[1].tag: '</s>' is a special piece"),
    ({"src": "a"}, "data.train[1].tgt: missing"),
    ({"src": "a", "tgt": "b", "name": "first"}, "data.train[1].name: 'first' is also the name of data.train[0]"),
])
def test_a_bad_corpus_entry_is_one_error_line_naming_its_key(entry, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [corpora_json({"src": "x", "tgt": "y", "name": "first"}, entry)])
    assert str(e.value).count("\n") == 0 and message in str(e.value), str(e.value)


def test_data_train_must_be_a_mapping_or_a_list_and_training_needs_a_corpus(tmp_path):
    from mtkit.training.train import train

    with pytest.raises(ConfigError, match="data.train: expected a mapping or a list of one or more mappings"):
        load_config(None, ["data.train=3"])
    # An empty list is a model's config without training data (mtkit import writes one); training
    # refuses it in one line before any work.
    cfg = load_config(None, ["data.train=[]", f"run_dir={tmp_path / 'run'}"])
    assert cfg.data.train == ()
    with pytest.raises(ConfigError, match="data.train: no training corpus; give one"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_corpus_names_default_to_tag_then_file_and_stay_unique():
    corpora = [CorpusConfig(src="d/a.de", tgt="d/a.en"), CorpusConfig(src="e/a.de", tgt="e/a.en"),
               CorpusConfig(path="x.tsv", tag="<BT>"), CorpusConfig(hub="wmt14", name="wmt")]
    assert corpus_names(corpora) == ["a.de", "a.de#1", "<BT>", "wmt"]


# ----------------------------------------------------------------------------- what an epoch draws


def test_epoch_draws_follow_the_weights_and_add_up():
    assert epoch_draws([100, 100], [1, 0.5]) == [133, 67]
    assert epoch_draws([10, 1000], [1, 1]) == [505, 505]
    assert epoch_draws([7, 5, 3], [1, 1, 1]) == [5, 5, 5]
    for sizes, weights in (([3, 4, 5], [0.1, 0.7, 0.2]), ([1, 1], [1e-6, 1])):
        assert sum(epoch_draws(sizes, weights)) == sum(sizes)


def test_a_mix_draws_without_replacement_as_far_as_a_corpus_reaches_and_a_fresh_part_each_epoch():
    small, large = CorpusSlice("small", 1.0, 0, 50), CorpusSlice("large", 1.0, 50, 950)
    mix = CorpusMix([small, large], [None, None], seed=4)
    assert mix.counts(0) == {"small": 500, "large": 500}
    e0, e1 = mix(0), mix(1)
    for rows in (e0, e1):
        seen = Counter(rows.tolist())
        assert {seen[i] for i in range(50)} == {10}  # each small pair exactly 10 times (500 / 50)
        large_rows = [i for i in rows.tolist() if i >= 50]
        assert len(large_rows) == len(set(large_rows)) == 500  # no large pair twice in an epoch
    assert set(e0[e0 >= 50].tolist()) != set(e1[e1 >= 50].tolist())  # another half of it next epoch
    assert np.array_equal(CorpusMix([small, large], [None, None], seed=4)(1), e1)  # a resume draws the same


def test_an_uneven_repeat_differs_by_at_most_one_between_pairs():
    a, b = CorpusSlice("a", 3.0, 0, 7), CorpusSlice("b", 1.0, 7, 100)
    rows = CorpusMix([a, b], [None, None], seed=1)(0)
    counts = Counter(i for i in rows.tolist() if i < 7)
    assert sum(counts.values()) == epoch_draws([7, 100], [3, 1])[0] == 80
    assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 7


def test_one_upsampled_corpus_draws_exactly_the_upsampled_rows():
    """One corpus: the mix is upsampling alone, row for row (old runs resume the same)."""
    src_lens = np.array([1, 5, 2, 7, 3, 9, 1])
    rows = upsample_index(src_lens, 5, 3)
    mix = CorpusMix([CorpusSlice("c", 2.5, 0, 7)], [[rows]], seed=9)
    assert np.array_equal(mix(0), rows) and np.array_equal(mix(3), rows)


def test_upsampling_applies_within_each_corpus_before_the_weights():
    rows_a = upsample_index(np.array([1, 9, 9, 1]), 5, 3)  # 4 pairs -> 8 rows
    mix = CorpusMix([CorpusSlice("a", 1.0, 0, 4), CorpusSlice("b", 1.0, 4, 8)], [[rows_a], None], seed=2)
    assert mix.counts(0) == {"a": 8, "b": 8}  # an epoch of 8 + 8 rows, half each
    got = Counter(mix(0).tolist())
    assert got[1] == got[2] == 3 and got[0] == got[3] == 1  # corpus a: the upsampled rows as they are


# ----------------------------------------------------------------------------- tags and the tokenizer


def test_a_tag_is_one_piece_of_the_tokenizer_and_goes_first(tmp_path):
    from mtkit.config import TokenizerConfig
    from mtkit.data.tokenizer import Tokenizer
    from mtkit.data.tokenizer_training import train_tokenizer

    words = [f"ab{i % 7} cd{i % 5} <copy>" for i in range(300)]
    tok = train_tokenizer(TokenizerConfig(vocab_size=40), words, words, tags=["<copy>", "<2de>"])
    copy = tok.tag_id("<copy>")
    assert tok.pieces("src")[copy] == "<copy>" and copy in tok.encode_src(["ab1 <copy> cd2"])[0]  # never split
    assert tok.encode_src(["ab1 cd2"], tag="<2de>") == [[tok.tag_id("<2de>"), *tok.encode_src(["ab1 cd2"])[0]]]
    tok.save(tmp_path / "tok")
    assert Tokenizer.load(tmp_path / "tok").tag_id("<2de>") == tok.tag_id("<2de>")  # kept across runs
    separate = train_tokenizer(TokenizerConfig(vocab_size=40, joint=False), words, words, tags=["<BT>"])
    separate.tag_id("<BT>")  # the source model holds the tags


def test_tokenizer_settings_of_one_untagged_corpus_are_as_before(tmp_path):
    """Run dirs made before corpora had tags and weights keep their tokenizer."""
    from mtkit.data.run_tokenizer import tokenizer_settings

    one = load_config(None, ["data.train.src=a", "data.train.tgt=b"])
    assert tokenizer_settings(one)["train"] == {
        "src": "a", "tgt": "b", "path": None, "hub": None, "hub_config": None, "split": "train", "streaming": False,
        "src_field": None, "tgt_field": None}
    weighted = load_config(None, [corpora_json({"src": "a", "tgt": "b", "weight": 3, "name": "x"})])
    assert tokenizer_settings(weighted) == tokenizer_settings(one)  # names and weights do not change pieces
    tagged = load_config(None, [corpora_json({"src": "a", "tgt": "b", "tag": "<BT>"})])
    assert tokenizer_settings(tagged) != tokenizer_settings(one)


# ----------------------------------------------------------------------------- through training


@pytest.mark.slow
def test_a_tagged_copy_corpus_and_a_plain_reverse_corpus_train_one_model_that_does_both(tmp_path):
    """The acceptance case: reverse (weight 1) and copy tagged <copy> (weight 0.5); the model copies
    tagged input and reverses plain input, each >= 90% exact on held-out sentences."""
    from mtkit.training.runlog import read_metrics
    from mtkit.training.train import train

    over = [f"run_dir={tmp_path / 'run'}", *two_corpora(tmp_path, n=10_000), "train.max_steps=1200",
            "train.eval_every=600", "train.max_time=null"]
    train(load_config(ROOT / "configs/tiny-reverse.yaml", over))
    events = read_metrics(tmp_path / "run/metrics.jsonl")
    epochs = [e for e in events if e["event"] == "epoch"]
    assert epochs[0]["epoch"] == 0 and all(e["corpus_pairs"] == {"reverse": 13_333, "copy": 6_667} for e in epochs)
    for task, prefix in (("rev", []), ("copy", ["--prefix", "<copy>"])):
        out = tmp_path / f"{task}.hyp"
        r = runner.invoke(app, ["translate", str(tmp_path / "run"), "-i", str(tmp_path / task / "test.src"),
                                "-o", str(out), *prefix])
        assert r.exit_code == 0, r.output
        ref = (tmp_path / task / "test.tgt").read_text().splitlines()
        exact = sum(h == t for h, t in zip(out.read_text().splitlines(), ref, strict=True)) / len(ref)
        assert exact >= 0.9, f"{task}: exact match {exact:.3f}"
    r = runner.invoke(app, ["translate", str(tmp_path / "run"), "--prefix", "<2de>"], input="ba de\n")
    assert r.exit_code == 2 and "error: --prefix '<2de>': not a tag of this model; its tags are <copy>" in r.output
    report = runner.invoke(app, ["data", "check", str(ROOT / "configs/tiny-reverse.yaml"), *sets(over)])
    assert report.exit_code == 0, report.output
    assert "train mix (weights; pairs per epoch): reverse 1: 13,333 (66.7%), copy 0.5: 6,667 (33.3%)" in report.output
    assert "train[1] (copy): 10,000 pairs from" in report.output and ", tag <copy>" in report.output


@pytest.mark.slow
def test_kill_9_then_resume_with_several_corpora_equals_uninterrupted(tmp_path):
    from mtkit.model.checkpoint import load_checkpoint
    from mtkit.training.train import train

    over = [f"run_dir={tmp_path / 'run'}", *two_corpora(tmp_path), *TINY, "train.max_steps=40",
            "train.eval_every=10", "train.log_every=1", "data.upsample_min_len=8", "data.upsample_factor=2"]
    p = _mtkit("train", str(ROOT / "configs/base.yaml"), *sets(over))
    metrics = tmp_path / "run/metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and '"step": 13,' not in (metrics.read_text() if metrics.exists() else ""):
        time.sleep(0.05)
    p.kill()
    p.communicate(timeout=60)
    assert p.returncode == -9 and 10 <= load_checkpoint(tmp_path / "run/last.pt")["step"] < 40
    r = _mtkit("train", str(ROOT / "configs/base.yaml"), *sets(over))
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    assert "corpora: reverse" in err and "copy: upsampling:" in err
    straight = [o.replace(str(tmp_path / "run"), str(tmp_path / "straight")) for o in over]
    train(load_config(ROOT / "configs/base.yaml", straight))
    assert same_weights(tmp_path / "run/last.pt", tmp_path / "straight/last.pt")


# ----------------------------------------------------------------------------- the tokenizer's sample


def test_the_tokenizer_trains_on_all_text_in_order_while_it_fits(tmp_path):
    import datasets

    from mtkit.data.tokenizer_sample import sample_size, sample_text

    a = datasets.Dataset.from_dict({"src": ["a1", "a2", ""], "tgt": ["x1", "x2", "x3"]})
    b = datasets.Dataset.from_dict({"src": ["b1"], "tgt": ["y1"]})
    total, nbytes, take = sample_size([a, b], ["src", "tgt"], max_sentences=100, max_bytes=1000)
    assert (total, nbytes, take) == (8, 14, 8)
    assert list(sample_text([a, b], ["src", "tgt"], take)) == ["a1", "a2", "b1", "x1", "x2", "x3", "y1"]


def test_a_large_text_is_sampled_within_both_bounds_and_the_same_every_time():
    import datasets

    from mtkit.data.tokenizer_sample import sample_size, sample_text

    rows = [f"sentence {i:05d}" for i in range(20_000)]  # 14 bytes each
    ds = datasets.Dataset.from_dict({"src": rows, "tgt": [r.upper() for r in rows]})
    assert sample_size([ds], ["src", "tgt"], max_sentences=5_000, max_bytes=10**9)[2] == 5_000
    total, nbytes, take = sample_size([ds], ["src", "tgt"], max_sentences=10**6, max_bytes=14_000)
    assert (total, nbytes, take) == (40_000, 560_000, 1_000)  # the byte bound: 1,000 sentences of 14 bytes
    first = list(sample_text([ds], ["src", "tgt"], take))
    assert first == list(sample_text([ds], ["src", "tgt"], take)) and len(set(first)) == 1_000
    upper = sum(s.isupper() for s in first[500:] + first[:500])
    assert 400 < upper < 600  # both sides, in proportion
    assert set(first) <= set(rows) | {r.upper() for r in rows}


def test_the_sample_is_taken_chunk_by_chunk_through_a_row_mapping():
    """A table of many Arrow chunks seen through an unsorted select mapping gives the same text as
    its flattened copy, without concatenating the column (tokenizer_sample._strings)."""
    import datasets

    from mtkit.data.tokenizer_sample import sample_size, sample_text

    parts = [datasets.Dataset.from_dict({"src": [f"s{c}-{i}" for i in range(300)], "tgt": [f"T{c}-{i}" * 2 for i in range(300)]})
             for c in range(7)]
    chunked = datasets.concatenate_datasets(parts)
    assert chunked.data.column("src").num_chunks == 7
    view = chunked.select(np.random.default_rng(1).permutation(2_100)[:1_500])  # unsorted mapping
    flat = view.flatten_indices()
    for take in (3_000, 700):  # all of it, in the view's order; a sample
        assert sample_size([view], ["src", "tgt"], 10**6, 10**9) == sample_size([flat], ["src", "tgt"], 10**6, 10**9)
        assert list(sample_text([view], ["src", "tgt"], take)) == list(sample_text([flat], ["src", "tgt"], take))
    assert list(sample_text([view], ["src"], 1_500)) == view["src"]


SAMPLE_MEMORY_PROBE = """
import datasets, pyarrow as pa
from mtkit.data.tokenizer_sample import sample_text
big = datasets.concatenate_datasets([datasets.Dataset.from_dict({"src": ["x" * 200] * 5_000}) for _ in range(10)])
before = pa.default_memory_pool().max_memory()
assert len(list(sample_text([big], ["src"], 100))) == 100
assert len(list(sample_text([big.select(range(49_999, -1, -1))], ["src"], 100))) == 100
print(pa.default_memory_pool().max_memory() - before)
"""


@pytest.mark.slow
def test_sampling_a_large_column_holds_no_copy_of_it():
    """Arrow's peak memory grows by far less than the 10 MB column (ChunkedArray.take copied all of
    it); in a fresh process, whose pool's high-water mark no earlier test has raised."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SAMPLE_MEMORY_PROBE], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) < 1_000_000


def test_memory_is_reported_by_kind():
    from mtkit.memory import memory_line, note_memory, peak_memory_mb

    now = note_memory()
    assert now["anon"] > 0 and "file" in now  # Linux: /proc/self/status
    peak = peak_memory_mb("cpu")
    assert peak["rss"] >= peak["anon"] >= now["anon"] // 2
    assert memory_line({"rss": 3390, "anon": 2473, "file": 264}) == "rss 3,390 MB (anonymous 2,473 MB, file-backed 264 MB)"
    assert memory_line({"anon": 580, "file": 981}) == "anonymous 580 MB, file-backed 981 MB"


def test_a_peak_between_samples_is_caught_while_sampling(monkeypatch):
    """sampled_memory sees a block allocated and freed between two note_memory calls (as
    SentencePiece's training was, between the log lines)."""
    from mtkit import memory

    monkeypatch.setattr(memory, "_PEAKS", {"anon": 0, "file": 0})
    before = memory.note_memory()["anon"]
    with memory.sampled_memory(every_s=0.02):
        block = np.ones(300 * 2**20 // 8)  # 300 MB, touched
        time.sleep(0.2)
        del block
        memory.release_freed_memory()  # back to the system, whatever keep_freed_memory set
    assert memory.note_memory()["anon"] < before + 100  # a sample now would not see it
    assert memory.peak_memory_mb("cpu")["anon"] > before + 250


def test_corpora_of_every_format_go_in_one_table_with_their_tags(tmp_path):
    """Text files, JSONL, Parquet with large strings, a save_to_disk folder: one training table,
    each corpus's rows where its slice says, a tagged corpus's sources starting with its tag."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtkit.config import TokenizerConfig
    from mtkit.data.pairs import prepare_train
    from mtkit.data.tokenizer_training import train_tokenizer

    (tmp_path / "a.de").write_text("eins zwei\ndrei\n")
    (tmp_path / "a.en").write_text("one two\nthree\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"de": "vier", "en": "four"}) + "\n")
    pq.write_table(pa.table({"de": pa.array(["fünf"], pa.large_string()), "en": pa.array(["five"], pa.large_string())}),
                   tmp_path / "c.parquet")
    datasets.Dataset.from_dict({"translation": [{"de": "sieben", "en": "seven"}]}).save_to_disk(str(tmp_path / "d"))
    cfg = load_config(None, ["data.max_len_ratio=10", corpora_json(
        {"src": str(tmp_path / "a.de"), "tgt": str(tmp_path / "a.en")}, {"path": str(tmp_path / "b.jsonl"), "tag": "<x>"},
        {"path": str(tmp_path / "c.parquet")}, {"path": str(tmp_path / "d"), "weight": 3})])
    words = ["eins zwei drei vier fünf sieben one two three four five seven"] * 50
    tok = train_tokenizer(TokenizerConfig(vocab_size=34), words, words, tags=["<x>"])
    train = prepare_train(cfg.data, tok, tmp_path / "cache")
    assert train.ds["src"] == ["eins zwei", "drei", "vier", "fünf", "sieben"]
    assert [(c.name, c.start, c.kept, c.weight) for c in train.corpora] == [
        ("a.de", 0, 2, 1.0), ("<x>", 2, 1, 1.0), ("c.parquet", 3, 1, 1.0), ("d", 4, 1, 3.0)]
    ids = train.ds["src_ids"]
    assert ids[2] == [tok.tag_id("<x>"), *tok.encode_src(["vier"])[0]] and ids[3] == tok.encode_src(["fünf"])[0]
