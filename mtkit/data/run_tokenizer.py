"""A run dir's tokenizer: trained from data.train the first time, reused while its settings hold.

RUN_DIR/tokenizer holds the SentencePiece model(s) and settings.yaml, what they were trained from
(the tokenizer section, the training split, the languages); a change to any of it trains them
again. `mtkit tokenizer` and `mtkit train` both get the tokenizer here. Training SentencePiece
itself is tokenizer.py's job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import yaml

from mtkit import files
from mtkit.config import Config, TokenizerConfig, to_dict
from mtkit.configcheck import corpus_key
from mtkit.data.sources import load_pairs
from mtkit.data.tokenizer import Tokenizer
from mtkit.data.tokenizer_sample import sample_size, sample_text
from mtkit.data.tokenizer_training import train_tokenizer
from mtkit.errors import TrainingError
from mtkit.memory import release_freed_memory

log = logging.getLogger("mtkit")


def tokenizer_settings(cfg: Config) -> dict[str, Any]:
    """What the tokenizer depends on: if any of it changes, the tokenizer is trained again. The
    corpora's sources and tags count, their names and weights do not (it trains on all the text)."""
    sources = [{k: v for k, v in to_dict(c).items() if k not in ("name", "weight")} for c in cfg.data.train]
    if len(sources) == 1 and sources[0]["tag"] is None:
        del sources[0]["tag"]  # one untagged corpus: the settings as saved before corpora had tags
        sources = sources[0]
    tokenizer = to_dict(cfg.tokenizer)
    if tokenizer["input_bytes"] == TokenizerConfig().input_bytes:
        del tokenizer["input_bytes"]  # the default: the settings as saved before the key existed
    return {"tokenizer": tokenizer, "train": sources,
            "src_lang": cfg.data.src_lang, "tgt_lang": cfg.data.tgt_lang}


def train_tags(cfg: Config) -> list[str]:
    """data.train's tags, each once, in the order the corpora give them."""
    return list(dict.fromkeys(c.tag for c in cfg.data.train if c.tag is not None))


def get_tokenizer(cfg: Config, run_dir: Path, *, retrain: bool = False, readonly: bool = False) -> Tokenizer:
    """The run dir's tokenizer if it was trained with these settings, else train and save one
    (`readonly`: it must be there already)."""
    tok_dir = run_dir / "tokenizer"
    settings_path = tok_dir / "settings.yaml"
    wanted = tokenizer_settings(cfg)
    existing = Tokenizer.load(tok_dir) if tok_dir.exists() else None
    if existing is not None and not retrain:
        saved = yaml.safe_load(settings_path.read_text(encoding="utf-8")) if settings_path.exists() else None
        if saved == wanted:
            log.info("tokenizer: using %s", tok_dir)
            return existing
        if not readonly:
            log.warning("tokenizer in %s was trained with other settings; training it again", tok_dir)
    if readonly:
        raise TrainingError(f"{tok_dir}: no tokenizer for this config; rank 0 should have trained it (was the"
                            " run dir changed during start-up?)")
    t0 = time.monotonic()
    corpora = [load_pairs(c, cfg.data, corpus_key(cfg.data.train, i).removeprefix("data."), cache_dir=run_dir / "cache")
               for i, c in enumerate(cfg.data.train)]
    tags = train_tags(cfg)
    log.info("tokenizer: training %s, vocab %d, %s on %d pairs%s ...", cfg.tokenizer.model_type,
             cfg.tokenizer.vocab_size, "joint" if cfg.tokenizer.joint else "separate", sum(map(len, corpora)),
             f", tags {' '.join(tags)} kept whole" if tags else "")
    tok = train_tokenizer(cfg.tokenizer, *training_text(cfg.tokenizer, corpora), tags)
    release_freed_memory()  # SentencePiece's working memory, before the data are prepared
    save_tokenizer(tok, tok_dir, wanted)
    log.info("tokenizer: vocab %d/%d saved in %s (%.1fs)", tok.src_vocab_size, tok.tgt_vocab_size,
             tok_dir, time.monotonic() - t0)
    return tok


def save_tokenizer(tok: Tokenizer, tok_dir: Path, settings: dict[str, Any] | None) -> None:
    """Write the model(s) into `tok_dir`, with the settings they were trained with; None (a tokenizer
    taken from a checkpoint, --init-from) removes settings.yaml, so no config claims it."""
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok.save(tok_dir)
    if settings is None:
        (tok_dir / "settings.yaml").unlink(missing_ok=True)
    else:
        files.write_text(tok_dir / "settings.yaml", yaml.safe_dump(settings, sort_keys=False))


def training_text(cfg: TokenizerConfig, corpora: list[datasets.Dataset]) -> tuple[Iterable[str], Iterable[str]]:
    """(source text, target text) to train on, each sampled within tokenizer.input_sentence_size
    and input_bytes (tokenizer_sample.py); a joint vocabulary's sample covers both sides at once,
    handed over as the source text."""
    sides = [["src", "tgt"]] if cfg.joint else [["src"], ["tgt"]]
    texts = []
    for columns in sides:
        total, nbytes, take = sample_size(corpora, columns, cfg.input_sentence_size, cfg.input_bytes)
        if take < total:
            log.info("tokenizer: a sample of %s of %s %s sentences (%s of %s MB; tokenizer.input_sentence_size"
                     " %s, input_bytes %s)", f"{take:,}", f"{total:,}", "/".join(columns),
                     f"{nbytes * take // total // 2**20:,}", f"{nbytes // 2**20:,}", f"{cfg.input_sentence_size:,}",
                     f"{cfg.input_bytes:,}")
        texts.append(sample_text(corpora, columns, take))
    return (texts[0], ()) if cfg.joint else (texts[0], texts[1])
