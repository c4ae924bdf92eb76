"""YAML config -> frozen dataclasses, validated in one place.

The dataclass defaults below are the one source of truth; `configs/base.yaml` documents every
key. `load_config` reads YAML with `safe_load`, applies `--set key.path=value` overrides, checks
unknown keys (with a "did you mean"), types, choices and cross-field rules, and raises one
ConfigError listing every problem as `path: message (got value)`. It does not read data or
touch the run dir; components receive their own section, never the whole Config.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from mtkit.configcheck import cross_field_problems, from_dict, yaml_type_name
from mtkit.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """Where one split's sentence pairs come from: exactly one of `src`+`tgt`, `path`, `hub`."""

    src: Optional[str] = None  # plain-text source file, one sentence per line (.gz allowed)
    tgt: Optional[str] = None  # plain-text target file, line-aligned with `src`
    path: Optional[str] = None  # one file or folder: .tsv/.csv/.jsonl/.parquet or a save_to_disk dir
    hub: Optional[str] = None  # Hugging Face dataset name, e.g. "wmt14"
    hub_config: Optional[str] = None  # its configuration, e.g. "de-en"
    split: str = "train"  # the split to take from `hub` or a save_to_disk DatasetDict
    streaming: bool = False  # stream `hub` instead of downloading it whole
    src_field: Optional[str] = None  # column/key of the source side; default data.src_lang
    tgt_field: Optional[str] = None  # column/key of the target side; default data.tgt_lang
    tag: Optional[str] = None  # e.g. "<BT>": put before every source sentence as one piece; null = none


@dataclass(frozen=True, kw_only=True)
class CorpusConfig(SplitConfig):
    """One training corpus: where its pairs come from and its share of an epoch (data/mixing.py)."""

    name: Optional[str] = None  # how logs and metrics name it; null = its tag, file or dataset name
    weight: float = 1.0  # its share of each epoch's pairs is weight / (sum of all corpora's weights)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    src_lang: str = "de"  # source language code (also the default column name)
    tgt_lang: str = "en"  # target language code
    # training corpora: one mapping, or a list of them mixed by weight (a single one is a list of one)
    train: tuple[CorpusConfig, ...] = (CorpusConfig(),)
    valid: Optional[SplitConfig] = None  # dev pairs for validation (never filtered)
    test: Optional[SplitConfig] = None  # test pairs, reported by `mtkit data check` only
    max_len: int = 128  # subword tokens per side; longer training pairs are dropped and counted
    max_len_ratio: float = 3.0  # drop training pairs whose token-length ratio exceeds this
    num_proc: Optional[int] = None  # processes for encoding; null = min(4, CPU cores)
    upsample_min_len: Optional[int] = None  # training pairs with a source this long (tokens) or longer ...
    upsample_pattern: Optional[str] = None  # ... or whose source matches this regex (Python re.search) ...
    upsample_factor: int = 1  # ... appear this many times per epoch (1 = off; see docs/data.md)
    upsample_schedule: Optional[tuple[int, ...]] = None  # a factor per epoch instead, the last for all later ones

    def __post_init__(self) -> None:
        if isinstance(self.train, SplitConfig):  # DataConfig(train=SplitConfig(...)) from Python: one corpus
            one = self.train if isinstance(self.train, CorpusConfig) else CorpusConfig(**dataclasses.asdict(self.train))
            object.__setattr__(self, "train", (one,))

    @property
    def upsample_factors(self) -> tuple[int, ...]:
        """The factor of each epoch: upsample_schedule, or upsample_factor alone (the last one repeats)."""
        return self.upsample_schedule or (self.upsample_factor,)


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    model_type: Literal["unigram", "bpe"] = "unigram"  # SentencePiece algorithm
    vocab_size: int = 8000  # pieces per vocabulary (lowered, with a warning, for tiny corpora)
    joint: bool = True  # one vocabulary for both sides (needed for model.tie_embeddings)
    character_coverage: float = 1.0  # share of characters covered, in [0.98, 1]; < 1 maps rare ones to <unk>
    input_sentence_size: int = 2_000_000  # sentences sampled for training the tokenizer
    input_bytes: int = 60_000_000  # ... and at most this much text (SentencePiece holds ~20x it in memory)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    d_model: int = 256  # model width (paper: 512 base)
    heads: int = 4  # attention heads h; d_k = d_v = d_model / heads
    d_ff: int = 1024  # inner width of the position-wise feed-forward network
    encoder_layers: int = 3  # N for the encoder (paper: 6)
    decoder_layers: int = 3  # N for the decoder (paper: 6)
    dropout: float = 0.1  # P_drop on embeddings+positions and every sub-layer output
    attention_dropout: float = 0.0  # dropout on attention weights (not in the paper; 0 = off)
    norm_first: bool = True  # pre-norm with final LayerNorm; false = the paper's post-norm
    tie_embeddings: bool = True  # share source, target and output embeddings (joint vocab only)
    # Options an imported model may need (mtkit import; Marian / OPUS-MT); the defaults are the paper's.
    activation: Literal["relu", "swish", "gelu"] = "relu"  # the FFN's non-linearity (paper: ReLU)
    attention_bias: bool = False  # biases on W^Q, W^K, W^V, W^O (the paper's equations have none)
    output_bias: bool = False  # a bias on the pre-softmax linear (Marian's final logits bias)
    scale_embeddings: bool = True  # embeddings times sqrt(d_model) (section 3.4)
    positions: Literal["interleaved", "halves"] = "interleaved"  # sin/cos layout: the paper's formula, or sin half / cos half


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    batch_tokens: int = 4096  # padded tokens of the longer side per batch (per process)
    pad_to_multiple: Optional[int] = None  # round batch lengths up to a multiple of this; null = 8 on GPU, 1 on CPU
    accum_steps: int = 1  # batches whose gradients are summed per update
    lr: float = 0.0007  # peak learning rate, reached at the end of warmup
    warmup_steps: int = 4000  # linear warmup updates, then lr * sqrt(warmup / step); 0 = lr / sqrt(step)
    cooldown: float = 0.0  # last fraction of the budget (steps, epochs or time) over which lr falls to 0; 0 = off
    label_smoothing: float = 0.1  # epsilon_ls of the paper
    label_smoothing_over: Literal["outputs", "vocab"] = "outputs"  # where the smoothing mass goes (loss.py)
    loss_chunk_tokens: int = 1024  # target tokens whose output layer and loss are computed at once (memory); 0 = the batch
    adam_betas: tuple[float, float] = (0.9, 0.98)  # Adam beta1, beta2 (paper section 5.3)
    adam_eps: float = 1e-9  # Adam epsilon (paper section 5.3)
    weight_decay: float = 0.0  # decoupled weight decay (AdamW); 0 = plain Adam as in the paper
    clip_norm: float = 1.0  # clip the gradient's global norm to this; 0 = off
    dropout_after_epochs: int = 0  # passes over the data trained without dropout before model.dropout applies
    ema_decay: float = 0.0  # exponential moving average of the weights, validated and saved (ema.py); 0 = off
    max_steps: Optional[int] = 100_000  # stop after this many updates
    max_epochs: Optional[int] = None  # stop after this many passes over the training data
    max_time: Optional[str] = None  # stop after this training time (all calls): seconds, "90s", "12m", "2h"
    eval_every: int = 1000  # updates between validations (and last.pt saves)
    log_every: int = 100  # updates between training log lines
    patience: int = 10  # stop after this many validations without a better best_metric; 0 = never
    best_metric: Literal["bleu", "chrf", "loss"] = "bleu"  # the dev score that picks best.pt and counts patience
    valid_max_sentences: Optional[int] = None  # validate on the first N dev pairs; null = all
    valid_tokenize: Optional[str] = None  # sacreBLEU tokenizer for dev BLEU; null = data.tgt_lang's (scoring.py)
    valid_chrf_word_order: int = 0  # dev chrF's word n-grams: 0 = chrF, 2 = chrF++
    keep_last: int = 2  # step checkpoints step-N.pt kept besides last.pt and best.pt
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto = bf16 where native, else fp32 (hardware.py)
    threads: Optional[int] = None  # CPU threads for torch; null = all cores
    max_bad_steps: int = 5  # NaN/inf or out-of-memory steps skipped before training stops
    compile: bool = False  # run the training forward through torch.compile (docs/results.md: measured slower on CPUs)


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    beam_size: int = 5  # hypotheses kept per sentence; 1 = greedy
    length_penalty: float = 1.0  # GNMT alpha in ((5+len)/6)^alpha; 0 = off
    max_len_a: float = 1.5  # output length limit is max_len_a * src_len + max_len_b
    max_len_b: int = 10
    nbest: int = 1  # hypotheses returned per sentence (<= beam_size)
    stopping: Literal["early", "exact"] = "early"  # when a beam-search sentence stops (see search.py)
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"  # matmuls while translating (decoding/precision.py)
    batch_tokens: int = 4096  # padded source tokens x beam_size per decoding batch (memory grows with both)
    max_input_tokens: int = 1024  # longer input lines are not translated (empty line + warning)
    workers: Optional[int] = None  # batches decoded at once on a CPU, sharing its threads; null = auto (decoding/workers.py)
    sample: bool = False  # draw each next piece instead of searching (back-translation; decoding/sampling.py)
    topk: int = 0  # with sample: draw among the k most probable pieces; 0 = all
    topp: float = 1.0  # with sample: draw within the smallest set of pieces holding this much probability
    temperature: float = 1.0  # with sample: divide the log-probabilities by this first
    seed: int = 1  # with sample: each line's samples are seeded from this, its text and the sample number
    prefix: Optional[str] = None  # a tag put before every source line as one piece, e.g. "<2de>" (translate --prefix)


@dataclass(frozen=True, kw_only=True)
class Config:
    run_dir: str = "runs/default"  # everything a run writes goes here
    seed: int = 1  # seeds data order, initialisation and dropout
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


# Keys that may differ when a run is resumed: budgets and logging, so a finished run can be extended.
RESUMABLE_KEYS = frozenset(
    {
        "run_dir",  # a run dir that was moved or copied resumes where it now is
        "train.max_steps",
        "train.max_epochs",
        "train.max_time",
        "train.cooldown",  # relative to the budget, so it may change with it (cool down a finished run)
        "train.patience",
        "train.eval_every",
        "train.log_every",
        "train.keep_last",
        "train.device",
        "train.threads",
        "train.compile",
        "train.precision",  # numerics only: a run started in bf16 on the wrong machine can go on in fp32
        "train.valid_max_sentences",
        "train.best_metric",  # best and patience restart with a warning (state.py), as for the three below
        "train.valid_tokenize",
        "train.valid_chrf_word_order",
        "decode.beam_size",
        "decode.length_penalty",
        "decode.max_len_a",
        "decode.max_len_b",
        "decode.nbest",
        "decode.stopping",
        "decode.precision",
        "decode.batch_tokens",
        "decode.max_input_tokens",
        "decode.workers",
        "decode.sample",
        "decode.topk",
        "decode.topp",
        "decode.temperature",
        "decode.seed",
        "decode.prefix",
        "data.num_proc",
    }
)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or only defaults when `path` is None) and apply `--set` overrides.

    Raises:
        ConfigError: listing every problem found, one per line.
    """
    raw: dict[str, Any] = {}
    where = "(defaults)"
    if path is not None:
        where = str(path)
        raw = read_yaml_mapping(Path(path))
    return build_config(raw, overrides, where)


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...], where: str = "config") -> Config:
    """`cfg` (e.g. a checkpoint's) with `--set` overrides applied and checked like a config file."""
    return build_config(to_dict(cfg), overrides, where)


def build_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], where: str) -> Config:
    """Apply overrides to parsed YAML and check everything, raising one ConfigError for all problems."""
    problems: list[str] = []
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ConfigError as e:
            problems.append(str(e))
            continue
        set_path(raw, key, value, problems)
    cfg = from_dict(Config, raw, "", problems)
    # Range and cross-field rules run on the fields that passed the type checks (the others hold
    # their defaults), so one pass reports every problem; a key already reported is not repeated.
    reported = {q.split(":", 1)[0] for q in problems}
    problems.extend(q for q in cross_field_problems(cfg) if q.split(":", 1)[0] not in reported)
    if len(problems) == 1:  # one problem: one line
        raise ConfigError(f"{where}: {problems[0]}")
    if problems:
        raise ConfigError(f"{where}: {len(problems)} problems in the config\n  " + "\n  ".join(problems))
    return cfg


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """`yaml.safe_load` a file that must hold a mapping; every failure is a ConfigError."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found (absolute path {path.resolve()})")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give the path of a YAML config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); is this a YAML config?") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{line} invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    if data is None:
        raise ConfigError(f"{path}: the config is empty; start from configs/base.yaml")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the config must be a mapping of keys (run_dir:, data:, model: ...),"
            f" not a {yaml_type_name(data)}; see configs/base.yaml"
        )
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`"train.lr=0.001"` -> `("train.lr", 0.001)`; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set train.lr=0.001")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"--set {item!r}: {key!r} is not a key path like train.lr")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML: take it as a plain string, the type check judges it
    return key, value


def set_path(raw: dict[str, Any], key: str, value: Any, problems: list[str]) -> None:
    """Set `raw[a][b][c] = value` for key `a.b.c`, creating mappings on the way."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            problems.append(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            return
        node = child
    node[parts[-1]] = value


# ----------------------------------------------------------------------------- helpers


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def from_plain_dict(raw: dict[str, Any]) -> Config:
    """Rebuild a Config saved with `to_dict` (e.g. inside a checkpoint); problems raise."""
    problems: list[str] = []
    cfg = from_dict(Config, raw, "", problems)
    if problems:
        raise ConfigError("saved config is invalid:\n  " + "\n  ".join(problems))
    return cfg


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(saved: Config, given: Config, ignore: frozenset[str] = RESUMABLE_KEYS) -> list[str]:
    """Keys whose values differ between two configs, except those in `ignore`."""
    a, b = flatten(to_dict(saved)), flatten(to_dict(given))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in ignore)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
