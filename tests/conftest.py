"""Shared fixtures: tiny synthetic corpora written into tmp_path, and a small tokenizer.

Tests never touch the network or ../shared. The Hugging Face caches point into a temporary folder
for the whole session (so no test writes into ~/.cache) and datasets runs offline.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# German/English sentences with umlauts, ß, punctuation and digits (round trips, tokenizer training).
DE_EN = [
    ("Der Bär läuft schnell über die Straße.", "The bear runs quickly across the street."),
    ("Wir haben 3 Äpfel und 12 Birnen gekauft!", "We bought 3 apples and 12 pears!"),
    ("Können Sie mir bitte helfen?", "Can you help me, please?"),
    ("Öffnen Sie das Fenster, es ist heiß.", "Open the window, it is hot."),
    ("Am 24. Dezember 2023 schneite es in München.", "On 24 December 2023 it snowed in Munich."),
    ("Grüße aus Köln: „Alles Gute!“", "Greetings from Cologne: \"All the best!\""),
    ("Das kostet 9,99 € pro Stück (inkl. MwSt.).", "That costs 9.99 € per piece (incl. VAT)."),
    ("Übung macht den Meister; Fehler sind erlaubt.", "Practice makes perfect; mistakes are allowed."),
]

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()

_SAVED_ENV: dict[str, str | None] = {}
_CACHE_ROOT: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    root = tempfile.mkdtemp(prefix="mtkit-tests-hf-")
    _CACHE_ROOT.append(root)
    for key, value in {
        "HF_HOME": root,
        "HF_DATASETS_CACHE": os.path.join(root, "datasets"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": os.path.join(root, "cache"),  # engine_speed.py's timing, never the user's cache
    }.items():
        _SAVED_ENV[key] = os.environ.get(key)
        os.environ[key] = value
    _watch_heavy_work()


# ----------------------------------------------------------------------------- `slow` means what it says
# A test that trains a model (Trainer.run) or starts a process, itself or through its fixtures, must be
# marked slow: unmarked ones fail, so `make test-fast` (-m "not slow") stays under a minute.
# A fixture that did such work (a module-scoped trained model, say) makes every test using it slow.
_RUNNING: dict[str, str | None] = {"test": None}  # the test whose setup, call or teardown runs now
_FIXTURES: list[str] = []  # the fixtures being set up now, innermost last
_HEAVY: dict[str, set[str]] = {}  # test id -> what heavy work it did
_HEAVY_FIXTURES: dict[str, str] = {}  # fixture name -> what heavy work it did


def _record(what: str, fn: Callable, ignore: Callable[..., bool] = lambda *a, **k: False) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if ignore(*args, **kwargs):
            return fn(*args, **kwargs)
        if _RUNNING["test"] is not None:
            _HEAVY.setdefault(_RUNNING["test"], set()).add(what)
        for name in _FIXTURES:
            _HEAVY_FIXTURES[name] = what
        return fn(*args, **kwargs)

    return wrapper


def _watch_heavy_work() -> None:
    from mtkit.training.trainer import Trainer

    Trainer.run = _record("trains a model", Trainer.run)
    # platform.platform() asks `uname -p` once per process: the standard library's business, not a test's.
    subprocess.Popen.__init__ = _record("starts a process", subprocess.Popen.__init__,
                                        ignore=lambda self, *a, **k: _program(a[0] if a else k.get("args")) == "uname")


def _program(args) -> str | None:
    """The program a Popen call starts: the first item of its argument list (or a whole string)."""
    if isinstance(args, (str, bytes, os.PathLike)):
        return os.fsdecode(args)
    return os.fsdecode(args[0]) if args else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _RUNNING["test"] = item.nodeid  # before its fixtures are set up: a module fixture's training counts


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    _FIXTURES.append(fixturedef.argname)
    try:
        yield
    finally:
        _FIXTURES.pop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if call.when == "teardown":
        _RUNNING["test"] = None
        heavy = _HEAVY.pop(item.nodeid, set())
        heavy |= {f"uses fixture {name!r}, which {what}" for name, what in _HEAVY_FIXTURES.items()
                  if name in getattr(item, "fixturenames", ())}
        if heavy and item.get_closest_marker("slow") is None and report.passed:
            report.outcome = "failed"
            report.longrepr = (f"{item.nodeid} {' and '.join(sorted(heavy))} but is not marked"
                               " @pytest.mark.slow (make test-fast must stay fast)")


def pytest_unconfigure(config: pytest.Config) -> None:
    for key, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for root in _CACHE_ROOT:
        shutil.rmtree(root, ignore_errors=True)


def reverse_pairs(n: int, seed: int = 0, min_words: int = 1, max_words: int = 8) -> list[tuple[str, str]]:
    """n random word sequences paired with their reversal (the reverse task)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        pairs.append((" ".join(words), " ".join(reversed(words))))
    return pairs


def write_pairs(src: Path, tgt: Path, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    """Write line-aligned plain-text files (UTF-8, "\\n" line ends)."""
    src.write_text("".join(a + "\n" for a, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(b + "\n" for _, b in pairs), encoding="utf-8")
    return src, tgt


@pytest.fixture
def reverse_corpus(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Factory: `reverse_corpus(n=200, name="train", seed=0)` -> (src, tgt) files in tmp_path."""

    def make(n: int = 200, name: str = "train", seed: int = 0) -> tuple[Path, Path]:
        return write_pairs(tmp_path / f"{name}.src", tmp_path / f"{name}.tgt", reverse_pairs(n, seed))

    return make


@pytest.fixture
def de_en_files(tmp_path: Path) -> tuple[Path, Path]:
    """The DE_EN sentences as train.de / train.en in tmp_path."""
    return write_pairs(tmp_path / "train.de", tmp_path / "train.en", DE_EN)


@pytest.fixture(scope="session")
def de_en_pairs() -> list[tuple[str, str]]:
    return list(DE_EN)


@functools.cache
def tokenizer_for_tests():
    """A joint unigram tokenizer over DE_EN and the reverse-task words (trains in ~0.1 s)."""
    from mtkit.config import TokenizerConfig
    from mtkit.data.tokenizer_training import train_tokenizer

    extra = [a for a, _ in reverse_pairs(300, seed=99)]
    src = [a for a, _ in DE_EN] * 5 + extra
    tgt = [b for _, b in DE_EN] * 5 + extra
    return train_tokenizer(TokenizerConfig(vocab_size=120), src, tgt)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tokenizer_for_tests()


@pytest.fixture(autouse=True)
def _restore_mtkit_logger():
    """Each test starts with mtkit's logger as the previous one found it: a CLI call sets up
    logging (runlog.setup_logging stops propagation to the root logger, where caplog listens), and
    whether a later test's caplog sees mtkit's warnings must not depend on test order."""
    log = logging.getLogger("mtkit")
    saved = (log.level, log.propagate, list(log.handlers))
    yield
    log.setLevel(saved[0])
    log.propagate = saved[1]
    log.handlers[:] = saved[2]
