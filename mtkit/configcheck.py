"""The checks behind load_config: types, choices, ranges and cross-field rules.

`from_dict` builds a frozen dataclass from parsed YAML, checking each value against the field's
type and appending every problem (with its key path) to a list instead of stopping at the first;
`cross_field_problems` adds the rules that involve values and several fields. Reading YAML and
applying `--set` overrides happen in config.py, which imports this module; so the sections are
passed in untyped here (`Any`: config.Config and its sections), never imported back.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal


def from_dict(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Build dataclass `cls` from a mapping, appending every problem found to `problems`."""
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or '(top level)'}: expected a mapping of keys (got {show(raw)})")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(fields)}"
            problems.append(f"{path}: unknown key{hint}")
            continue
        ok, converted = check_value(hints[key], value, path, problems)
        if ok:
            kwargs[key] = converted
    return cls(**kwargs)


def check_value(tp: Any, value: Any, path: str, problems: list[str]) -> tuple[bool, Any]:
    """Check `value` against type `tp`; return (ok, value converted to the field's type)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return True, None
        return check_value(args[0], value, path, problems)
    if value is None:
        problems.append(f"{path}: must not be null")
        return False, None
    if dataclasses.is_dataclass(tp):
        return True, from_dict(tp, value, path + ".", problems)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            problems.append(f"{path}: expected one of {', '.join(map(str, choices))} (got {show(value)})")
            return False, None
        return True, value
    if origin is tuple and typing.get_args(tp)[1:] == (Ellipsis,) and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        return True, sections(typing.get_args(tp)[0], value, path, problems)
    if origin is tuple and typing.get_args(tp)[1:] == (Ellipsis,):  # tuple[int, ...]: a list of any length >= 1
        if not isinstance(value, (list, tuple)) or not value:
            problems.append(f"{path}: expected a list of one or more numbers (got {show(value)})")
            return False, None
        items = [check_value(typing.get_args(tp)[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            problems.append(f"{path}: expected a list of {len(args)} numbers (got {show(value)})")
            return False, None
        items = [check_value(a, v, f"{path}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value))]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false (got {show(value)})")
            return False, None
        return True, value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected a whole number (got {show(value)})")
            return False, None
        return True, value
    if tp is float:
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*", value):
            value = float(value)  # YAML 1.1 reads 1e-9 (no dot) as a string; it is plainly a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected a number (got {show(value)})")
            return False, None
        return True, float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and path.endswith("max_time"):
            return True, str(value)  # max_time: a bare number of seconds
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string (got {show(value)})")
            return False, None
        return True, value
    raise AssertionError(f"config type {tp} of {path} is not handled")  # a bug in this file


def sections(cls: type, value: Any, path: str, problems: list[str]) -> tuple:
    """A list of mappings (data.train's corpora) as a tuple of `cls`; one mapping is a list of one.
    An empty list is a model's config with no training data (an imported model's): `mtkit train`
    refuses it (sources.check_data_files)."""
    if isinstance(value, dict):
        return (from_dict(cls, value, path + ".", problems),)
    if isinstance(value, (list, tuple)) and not value:
        return ()
    if not isinstance(value, (list, tuple)):
        problems.append(f"{path}: expected a mapping or a list of one or more mappings (got {show(value)})")
        return (cls(),)
    return tuple(from_dict(cls, v, f"{path}[{i}].", problems) for i, v in enumerate(value))


def cross_field_problems(cfg: Any) -> list[str]:
    """Ranges and rules that involve more than one field's type, section by section."""
    p = _Problems()
    for i, corpus in enumerate(cfg.data.train):
        key = corpus_key(cfg.data.train, i)
        p.extend(split_problems(key, corpus))
        p.extend(corpus_problems(key, corpus))
    for name, split in (("valid", cfg.data.valid), ("test", cfg.data.test)):
        if split is not None:
            p.extend(split_problems(f"data.{name}", split))
            p.extend(tag_problems(f"data.{name}", split.tag))
    p.extend(corpus_names_problems(cfg.data.train))
    _data_problems(p, cfg.data)
    _model_problems(p, cfg.tokenizer, cfg.model)
    _train_problems(p, cfg.train)
    _decode_problems(p, cfg.decode)
    return p


class _Problems(list):
    """Problems found so far, with the range checks most fields need."""

    def positive(self, path: str, value: float | None, allow_zero: bool = False) -> None:
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            self.append(f"{path}: must be {'>= 0' if allow_zero else '> 0'} (got {value})")

    def fraction(self, path: str, value: float, top_inclusive: bool = False) -> None:
        if not (0.0 <= value < 1.0 or (top_inclusive and value == 1.0)):
            self.append(f"{path}: must be in [0, 1{']' if top_inclusive else ')'} (got {value})")


def _data_problems(p: _Problems, d: Any) -> None:
    p.positive("data.max_len", d.max_len)
    if d.max_len_ratio < 1.0:
        p.append(f"data.max_len_ratio: must be >= 1 (got {d.max_len_ratio})")
    p.positive("data.num_proc", d.num_proc)
    p.positive("data.upsample_min_len", d.upsample_min_len)
    p.positive("data.upsample_factor", d.upsample_factor)
    for i, factor in enumerate(d.upsample_schedule or ()):
        p.positive(f"data.upsample_schedule[{i}]", factor)
    if d.upsample_schedule is not None and d.upsample_factor != 1:
        p.append(f"data.upsample_schedule: give it or data.upsample_factor (now {d.upsample_factor}), not both")
    for key, factor in (("upsample_factor", d.upsample_factor), ("upsample_schedule", max(d.upsample_schedule or [1]))):
        if factor > 1 and d.upsample_min_len is None and d.upsample_pattern is None:
            given = getattr(d, key)
            p.append(f"data.{key}: {list(given) if isinstance(given, tuple) else given} needs data.upsample_min_len or"
                     " data.upsample_pattern (which pairs to repeat)")
    if d.upsample_pattern is not None:
        try:
            re.compile(d.upsample_pattern)
        except re.error as e:
            p.append(f"data.upsample_pattern: not a regular expression ({e}): {d.upsample_pattern!r}")


def _model_problems(p: _Problems, tok: Any, m: Any) -> None:
    if tok.vocab_size < 8:
        p.append(f"tokenizer.vocab_size: must be >= 8 (got {tok.vocab_size})")
    if not 0.98 <= tok.character_coverage <= 1.0:  # SentencePiece refuses anything lower
        p.append(f"tokenizer.character_coverage: must be in [0.98, 1] (got {tok.character_coverage})")
    p.positive("tokenizer.input_sentence_size", tok.input_sentence_size)
    p.positive("tokenizer.input_bytes", tok.input_bytes)
    for key in ("d_model", "heads", "d_ff", "encoder_layers", "decoder_layers"):
        p.positive(f"model.{key}", getattr(m, key))
    if m.d_model > 0 and m.heads > 0 and m.d_model % m.heads:
        p.append(f"model.heads: must divide model.d_model={m.d_model} (got {m.heads})")
    p.fraction("model.dropout", m.dropout)
    p.fraction("model.attention_dropout", m.attention_dropout)
    if m.tie_embeddings and not tok.joint:
        p.append("model.tie_embeddings: needs tokenizer.joint: true (one shared vocabulary);"
                 " set one of them to the other's value")


def _train_problems(p: _Problems, t: Any) -> None:
    for key in ("batch_tokens", "accum_steps", "lr", "adam_eps", "eval_every", "log_every"):
        p.positive(f"train.{key}", getattr(t, key))
    for key in ("warmup_steps", "weight_decay", "clip_norm", "patience", "keep_last", "max_bad_steps",
                "dropout_after_epochs", "valid_chrf_word_order", "loss_chunk_tokens"):
        p.positive(f"train.{key}", getattr(t, key), allow_zero=True)
    for key in ("max_steps", "max_epochs", "valid_max_sentences", "threads", "pad_to_multiple"):
        p.positive(f"train.{key}", getattr(t, key))
    p.fraction("train.label_smoothing", t.label_smoothing)
    p.fraction("train.ema_decay", t.ema_decay)
    p.fraction("train.cooldown", t.cooldown, top_inclusive=True)
    if t.cooldown > 0 and t.max_steps is None and t.max_epochs is None and t.max_time is None:
        p.append(f"train.cooldown: is a fraction of the budget, but no budget is set (got {t.cooldown});"
                 " set train.max_steps, max_epochs or max_time")
    for i, beta in enumerate(t.adam_betas):
        p.fraction(f"train.adam_betas[{i}]", beta)
    if t.max_time is not None:
        try:
            parse_duration(t.max_time)
        except ValueError as e:
            p.append(f"train.max_time: {e}")


def _decode_problems(p: _Problems, dec: Any) -> None:
    p.positive("decode.beam_size", dec.beam_size)
    p.positive("decode.length_penalty", dec.length_penalty, allow_zero=True)
    p.positive("decode.max_len_a", dec.max_len_a, allow_zero=True)
    p.positive("decode.max_len_b", dec.max_len_b, allow_zero=True)
    p.positive("decode.batch_tokens", dec.batch_tokens)
    p.positive("decode.nbest", dec.nbest)
    p.positive("decode.max_input_tokens", dec.max_input_tokens)
    p.positive("decode.workers", dec.workers)
    p.positive("decode.topk", dec.topk, allow_zero=True)
    p.positive("decode.temperature", dec.temperature)
    if not 0.0 < dec.topp <= 1.0:
        p.append(f"decode.topp: must be in (0, 1] (got {dec.topp})")
    if dec.nbest > dec.beam_size > 0 and not dec.sample:  # with sample, nbest counts independent samples
        p.append(f"decode.nbest: must be <= decode.beam_size={dec.beam_size} (got {dec.nbest})")
    p.extend(tag_problems("decode.prefix", dec.prefix))
    if dec.max_len_a == 0 and dec.max_len_b == 0:
        p.append("decode.max_len_b: max_len_a and max_len_b are both 0, so no output could be produced")


def split_problems(prefix: str, s: Any) -> list[str]:
    """A split names exactly one source: src+tgt files, one `path`, or a `hub` dataset."""
    kinds = [k for k, on in (("src/tgt", s.src or s.tgt), ("path", s.path), ("hub", s.hub)) if on]
    if len(kinds) != 1:
        got = " and ".join(kinds) if kinds else "none"
        return [f"{prefix}: give exactly one of src+tgt, path or hub (got {got})"]
    if kinds[0] == "src/tgt" and not (s.src and s.tgt):
        missing = "tgt" if s.src else "src"
        return [f"{prefix}.{missing}: missing; a file pair needs both src and tgt"]
    return []


def corpus_key(corpora: Any, i: int) -> str:
    """How messages name training corpus i: data.train alone, data.train[i] among several."""
    return "data.train" if len(corpora) == 1 else f"data.train[{i}]"


RESERVED_PIECES = ("<pad>", "<unk>", "<s>", "</s>")  # tokenizer.py's special pieces


def corpus_problems(key: str, c: Any) -> list[str]:
    """A training corpus's weight, tag and name (its source is split_problems')."""
    out = tag_problems(key, c.tag)
    if not c.weight > 0:
        out.append(f"{key}.weight: must be > 0 (got {c.weight}); it is the corpus's share of each epoch")
    if c.name is not None and not c.name.strip():
        out.append(f"{key}.name: must not be empty (got {c.name!r})")
    return out


def tag_problems(key: str, tag: str | None) -> list[str]:
    """A tag becomes one tokenizer piece: one word, not a special piece."""
    if tag is not None and (not tag or any(ch.isspace() or ch == "," for ch in tag)):
        return [f"{key}.tag: must be one word without spaces or commas, e.g. \"<BT>\" (got {tag!r})"]
    if tag in RESERVED_PIECES:
        return [f"{key}.tag: {tag!r} is a special piece of the tokenizer; choose another, e.g. \"<BT>\""]
    return []


def corpus_names_problems(corpora: Any) -> list[str]:
    """Two corpora may not share a name: logs and metrics.jsonl count pairs by name."""
    seen: dict[str, int] = {}
    out = []
    for i, c in enumerate(corpora):
        if c.name is not None:
            if c.name in seen:
                out.append(f"data.train[{i}].name: {c.name!r} is also the name of data.train[{seen[c.name]}];"
                           " give each corpus its own name")
            seen.setdefault(c.name, i)
    return out


def parse_duration(value: str | float | int) -> float:
    """`"90s"`, `"12m"`, `"2h"`, `"1.5h"`, `"3600"` or `3600` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", str(value))
    if not m:
        raise ValueError(f"expected seconds or a duration like 90s, 12m, 2h (got {value!r})")
    seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"must be > 0 (got {value!r})")
    return seconds


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def yaml_type_name(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
