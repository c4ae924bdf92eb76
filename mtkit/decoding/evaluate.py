"""`mtkit evaluate`: score a hypothesis file, or translate a source file (or a run's dev set) with a
model and score the output; sacreBLEU itself is called in scoring.py.

BLEU is tokenized for the target language: the model's data.tgt_lang, or `--tgt-lang` for a
hypothesis file; `--tokenize` and `--chrf-word-order` override. `--valid` scores as the run's
validation did (its train.valid_tokenize and train.valid_chrf_word_order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtkit import files
from mtkit.config import Config, from_plain_dict
from mtkit.data.pairs import dev_subset
from mtkit.data.sources import load_pairs
from mtkit.decoding.ct2 import export_config, is_ct2_dir
from mtkit.decoding.loading import load_for_decoding
from mtkit.decoding.scoring import Scoring, validation_scoring
from mtkit.decoding.textio import read_text_lines
from mtkit.decoding.translate import translate_lines
from mtkit.errors import ConfigError, DataError
from mtkit.model.checkpoint import load_checkpoint, resolve_model_path


def score_files(hyp_path: Path, ref_path: Path, scoring: Scoring = Scoring()) -> dict[str, Any]:
    """Score a hypothesis file against a reference file, refusing different line counts."""
    hyps = read_text_lines(hyp_path, "hypotheses")
    refs = read_text_lines(ref_path, "references")
    if len(hyps) != len(refs):
        raise DataError(
            f"hypotheses {hyp_path} has {len(hyps)} lines but references {ref_path} has {len(refs)};"
            " they must be line-aligned"
        )
    return scoring.score(hyps, refs)


def translate_and_score(model, tokenizer, decode, src_path: Path, ref_path: Path, device: str = "cpu",
                        output: Path | None = None, scoring: Scoring = Scoring()) -> dict[str, Any]:
    """Translate a source file with a loaded model (loading.load_for_decoding) and score the
    output against line-aligned references; `output` also keeps the translations (written
    atomically). The result is `score`'s, plus the beam size and length penalty used."""
    refs = read_text_lines(ref_path, "references")
    srcs = read_text_lines(src_path, "source")
    if len(srcs) != len(refs):
        raise DataError(f"source {src_path} has {len(srcs)} lines but references {ref_path} has {len(refs)};"
                        " they must be line-aligned")
    return _translate_and_score_lines(model, tokenizer, decode, srcs, refs, device, output, scoring)


def _translate_and_score_lines(model, tokenizer, decode, srcs: list[str], refs: list[str], device: str,
                               output: Path | None, scoring: Scoring) -> dict[str, Any]:
    hyps = [ts[0].text for ts in translate_lines(model, tokenizer, srcs, decode, device)]
    if output is not None:
        files.write_text(output, "".join(h + "\n" for h in hyps))
    result = scoring.score(hyps, refs)
    result["decode"] = {"beam_size": decode.beam_size, "length_penalty": decode.length_penalty,
                        "precision": decode.precision}
    return result


def evaluate(model: str | list[str] | None, src: Path | None, ref: Path | None, hyp: Path | None, valid: bool, *,
             device: str = "auto", overrides: list[str] | tuple[str, ...] = (), beam: int | None = None,
             greedy: bool = False, batch_tokens: int | None = None, engine: str = "torch",
             output: Path | None = None, tgt_lang: str | None = None, tokenize: str | None = None,
             chrf_word_order: int | None = None, weights: list[float] | None = None) -> dict[str, Any]:
    """What `mtkit evaluate` scores: a hypothesis file (`hyp`), MODEL's translations of `src`, or with
    `valid` MODEL's greedy translations of its run's dev set, decoded and scored as training's
    validation did. `tgt_lang`, `tokenize`, `chrf_word_order`: see the module docstring. Several
    models (a list) decode as an ensemble (`weights`), with the first one's config."""
    if chrf_word_order is not None and chrf_word_order < 0:
        raise ConfigError(f"--chrf-word-order: must be >= 0 (got {chrf_word_order}); 2 is chrF++")
    if hyp is not None:
        if model is not None or src is not None or valid or ref is None:
            raise ConfigError("--hyp scores a file: give it with --ref, without MODEL, --src or --valid")
        return score_files(hyp, ref, Scoring(tgt_lang, tokenize, chrf_word_order or 0))
    if model is None:
        raise ConfigError("give MODEL with --src and --ref (translate, then score), MODEL with --valid (its run's"
                          " dev set, as validation scored it), or --hyp with --ref (score a file)")
    if valid and (src is not None or ref is not None):
        raise ConfigError("--valid takes the dev set from MODEL's config (data.valid); drop --src and --ref")
    if not valid and (src is None or ref is None):
        raise ConfigError("give --src and --ref (or --valid, to score the run's dev set as validation did)")
    if valid:
        if engine != "torch" or beam is not None:
            raise ConfigError("--valid decodes as training's validation did: greedy, with mtkit's engine;"
                              " drop --beam / --engine")
        greedy = True
    first = model[0] if isinstance(model, list) else model
    cfg = model_config(first)
    if valid and cfg.data.valid is not None and cfg.data.valid.tag is not None:  # as validation encoded it
        overrides = [*overrides, f"decode.prefix={json.dumps(cfg.data.valid.tag)}"]
    base = validation_scoring(cfg) if valid else Scoring(cfg.data.tgt_lang)
    scoring = Scoring(tgt_lang or base.tgt_lang, tokenize or base.tokenize,
                      base.chrf_word_order if chrf_word_order is None else chrf_word_order)
    scoring.check()
    net, tok, decode, dev = load_for_decoding(model, device, overrides, beam, greedy, None, batch_tokens, engine,
                                              weights)
    if not valid:
        return translate_and_score(net, tok, decode, src, ref, dev, output, scoring)
    return _translate_and_score_lines(net, tok, decode, *validation_pairs(first, cfg), dev, output, scoring)


def model_config(model_path: str | Path) -> Config:
    """The config a checkpoint, run dir or CTranslate2 export was trained with."""
    if is_ct2_dir(model_path):
        return export_config(model_path)
    return from_plain_dict(load_checkpoint(resolve_model_path(model_path))["config"])


def validation_pairs(model_path: str | Path, cfg: Config | None = None) -> tuple[list[str], list[str]]:
    """The dev sources and references a checkpoint's training validated on: its config's data.valid,
    read as training reads it, cut to train.valid_max_sentences (pairs.dev_subset)."""
    cfg = cfg or model_config(model_path)
    if cfg.data.valid is None:
        raise ConfigError(f"{model_path}: its config has no data.valid, so training never validated; use --src and --ref")
    pairs = dev_subset(load_pairs(cfg.data.valid, cfg.data, "valid"), cfg.train.valid_max_sentences)
    return list(pairs["src"]), list(pairs["tgt"])
