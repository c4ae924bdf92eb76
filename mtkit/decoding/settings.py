"""The decode settings a command runs with: the checkpoint's decode section, then `--set decode.*`
overrides, then the command-line flags (--beam, --greedy, --nbest, --batch-tokens), each checked.

A trained model is fixed: only decode.* keys may change when translating or evaluating.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mtkit.config import Config, DecodeConfig, apply_overrides
from mtkit.data.tokenizer import Tokenizer
from mtkit.errors import ConfigError, DataError


def decode_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """`cfg` with `--set decode.*=...` applied; other keys are an error (a trained model is fixed)."""
    bad = [s for s in overrides if not s.split("=", 1)[0].strip().startswith("decode.")]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: only decode.* keys can be changed when translating")
    return apply_overrides(cfg, list(overrides), where="--set") if overrides else cfg


def check_prefix(tokenizer: Tokenizer, decode: DecodeConfig, cfg: Config) -> None:
    """decode.prefix (--prefix) must be a tag the model was trained with: one piece of its vocabulary."""
    if decode.prefix is None:
        return
    try:
        tokenizer.tag_id(decode.prefix)
    except DataError:
        splits = [*cfg.data.train, cfg.data.valid, cfg.data.test]
        tags = list(dict.fromkeys(s.tag for s in splits if s is not None and s.tag is not None))
        known = f"its tags are {', '.join(tags)}" if tags else "it was trained without tags (data.train's tag)"
        raise ConfigError(f"--prefix {decode.prefix!r}: not a tag of this model; {known}") from None


def decode_settings(base: DecodeConfig, beam: int | None = None, greedy: bool = False, nbest: int | None = None,
                    batch_tokens: int | None = None) -> DecodeConfig:
    """The checkpoint's decode settings with the command-line flags applied and checked."""
    changes: dict[str, Any] = {}
    if greedy:
        changes["beam_size"] = 1
    elif beam is not None:
        changes["beam_size"] = beam
    if nbest is not None:
        changes["nbest"] = nbest
    if batch_tokens is not None:
        changes["batch_tokens"] = batch_tokens
    d = replace(base, **changes)
    if d.beam_size < 1:
        raise ConfigError(f"--beam: must be >= 1 (got {d.beam_size})")
    if d.nbest < 1 or (d.nbest > d.beam_size and not d.sample):
        raise ConfigError(f"--nbest: must be between 1 and the beam size {d.beam_size} (got {d.nbest});"
                          " with --sample it is the number of samples")
    if d.batch_tokens < 1:
        raise ConfigError(f"--batch-tokens: must be >= 1 (got {d.batch_tokens})")
    return d
