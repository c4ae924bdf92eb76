"""Fuzz the corpus readers with hypothesis: random bytes and near-valid text in every format
give either pairs or an MtkitError (a one-line `error:` for the user), never another exception.
(The config loader is fuzzed in tests/test_config.py.)"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtkit.config import DataConfig, SplitConfig
from mtkit.data.sources import load_pairs
from mtkit.errors import MtkitError

COUNTER = itertools.count()
# Text close enough to each format to get past the first checks into the parsers.
FIELD = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
TSV = st.lists(st.lists(FIELD, min_size=0, max_size=4).map("\t".join), max_size=6).map(
    lambda rows: "\n".join(["de\ten", *rows]))
CSV = st.lists(st.lists(FIELD, min_size=0, max_size=4).map(",".join), max_size=6).map(
    lambda rows: "\n".join(["de,en", *rows]))
JSONL = st.lists(st.one_of(
    st.fixed_dictionaries({"de": FIELD, "en": FIELD}).map(lambda d: str(d).replace("'", '"')),
    st.fixed_dictionaries({"translation": st.fixed_dictionaries({"de": FIELD, "en": FIELD})}).map(
        lambda d: str(d).replace("'", '"')),
    FIELD), max_size=6).map("\n".join)


def attempt(name: str, blob: bytes, pair: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f{next(COUNTER)}{name}"
        path.write_bytes(blob)
        split = SplitConfig(src=str(path), tgt=str(path)) if pair else SplitConfig(path=str(path))
        try:
            ds = load_pairs(split, DataConfig(train=split), "train", Path(tmp) / "cache")
        except MtkitError as e:
            assert str(e) and "\n" not in str(e).strip().splitlines()[0]
            return
        assert set(ds.column_names) >= {"src", "tgt"}
        assert all(isinstance(x, str) for x in [*ds["src"], *ds["tgt"]])


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".tsv", ".csv", ".jsonl", ".de", ".de.gz", ".parquet"]))
def test_random_bytes(blob, suffix):
    attempt(suffix, blob, pair=suffix in (".de", ".de.gz"))


@pytest.mark.slow
@FUZZ
@given(st.one_of(TSV.map(lambda t: (".tsv", t)), CSV.map(lambda t: (".csv", t)), JSONL.map(lambda t: (".jsonl", t))))
def test_near_valid_tables(case):
    suffix, text = case
    attempt(suffix, text.encode("utf-8"))
