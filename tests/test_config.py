"""Config loading: defaults, overrides, and every class of config error, all listed at once."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from mtkit.config import (
    Config,
    DecodeConfig,
    apply_overrides,
    differing_keys,
    from_plain_dict,
    load_config,
    to_dict,
)
from mtkit.configcheck import parse_duration
from mtkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return str(e.value)


def test_contract_keys_load(tmp_path):
    p = write(tmp_path, """
run_dir: runs/ding-small
seed: 1
data:
  src_lang: de
  tgt_lang: en
  train: {src: data/ding-de-en/train.de, tgt: data/ding-de-en/train.en}
  valid: {src: data/ding-de-en/dev.de, tgt: data/ding-de-en/dev.en}
  max_len: 128
  max_len_ratio: 3.0
tokenizer: {model_type: unigram, vocab_size: 8000, joint: true}
model: {d_model: 256, heads: 4, d_ff: 1024, encoder_layers: 3, decoder_layers: 3, dropout: 0.1, norm_first: true, tie_embeddings: true}
train: {batch_tokens: 4096, accum_steps: 1, lr: 0.0007, warmup_steps: 4000, label_smoothing: 0.1, max_steps: 100000, max_time: null, eval_every: 1000, patience: 10, device: auto, precision: fp32}
decode: {beam_size: 5, length_penalty: 1.0, max_len_a: 1.5, max_len_b: 10}
""")
    cfg = load_config(p)
    assert cfg.data.train[0].src == "data/ding-de-en/train.de"
    assert cfg.model.heads == 4 and cfg.train.lr == 0.0007 and cfg.decode.max_len_a == 1.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 2  # type: ignore[misc]


def test_overrides_are_typed_and_validated(tmp_path):
    p = write(tmp_path, "data: {train: {src: a, tgt: b}}\n")
    cfg = load_config(p, ["train.lr=0.001", "model.norm_first=false", "train.max_time=12m", "data.valid.src=x",
                          "data.valid.tgt=y"])
    assert cfg.train.lr == 0.001 and cfg.model.norm_first is False and cfg.train.max_time == "12m"
    assert cfg.data.valid.src == "x"
    msg = error_of(p, ["train.lr=fast"])
    assert "train.lr: expected a number (got 'fast')" in msg


def test_every_problem_listed_at_once(tmp_path):
    p = write(tmp_path, """
data: {train: {src: a, tgt: b}}
model: {hedas: 4, d_model: 250, heads: 3}
train: {lr: fast, device: tpu}
decode: {beam_size: 0}
""")
    msg = error_of(p, ["nonsense"])
    for part in [
        "model.hedas: unknown key; did you mean model.heads?",
        "train.lr: expected a number (got 'fast')",
        "train.device: expected one of auto, cpu, cuda (got 'tpu')",
        "model.heads: must divide model.d_model=250 (got 3)",
        "decode.beam_size: must be > 0 (got 0)",
        "--set 'nonsense': expected key.path=value",
    ]:
        assert part in msg, msg
    assert msg.startswith(f"{p}: 6 problems")


@pytest.mark.parametrize("text,expect", [
    ("model: {d_model: 256\n  heads: [\n", "invalid YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("", "the config is empty"),
    ("train: {lr: -1}\ndata: {train: {src: a, tgt: b}}\n", "train.lr: must be > 0 (got -1.0)"),
    ("train: {max_time: soon}\ndata: {train: {src: a, tgt: b}}\n", "train.max_time: expected seconds or a duration"),
    ("data: {train: {src: a}}\n", "data.train.tgt: missing"),
    ("data: {train: {src: a, tgt: b, hub: wmt14}}\n", "data.train: give exactly one of src+tgt, path or hub"),
    ("data: {train: {src: a, tgt: b}}\ntokenizer: {joint: false}\n", "model.tie_embeddings: needs tokenizer.joint"),
    ("data: {train: {src: a, tgt: b}}\nmodel: {dropout: 1.5}\n", "model.dropout: must be in [0, 1)"),
    ("data: {train: {src: a, tgt: b}}\ntrain: {cooldown: 1.5}\n", "train.cooldown: must be in [0, 1] (got 1.5)"),
    ("data: {train: {src: a, tgt: b}}\ntrain: {cooldown: 0.2, max_steps: null}\n",
     "train.cooldown: is a fraction of the budget, but no budget is set"),
    ("data: {train: {src: a, tgt: b}, upsample_factor: 5}\n",
     "data.upsample_factor: 5 needs data.upsample_min_len or data.upsample_pattern"),
    ("data: {train: {src: a, tgt: b}, upsample_schedule: [1, 5]}\n",
     "data.upsample_schedule: [1, 5] needs data.upsample_min_len or data.upsample_pattern"),
    ("data: {train: {src: a, tgt: b}, upsample_min_len: 9, upsample_schedule: [1, 5], upsample_factor: 2}\n",
     "data.upsample_schedule: give it or data.upsample_factor (now 2), not both"),
    ("data: {train: {src: a, tgt: b}, upsample_min_len: 9, upsample_schedule: []}\n",
     "data.upsample_schedule: expected a list of one or more numbers (got [])"),
    ("data: {train: {src: a, tgt: b}, upsample_min_len: 9, upsample_schedule: [1, 0]}\n",
     "data.upsample_schedule[1]: must be > 0 (got 0)"),
    ("data: {train: {src: a, tgt: b}, upsample_min_len: 9, upsample_schedule: [1, x]}\n",
     "data.upsample_schedule[1]: expected a whole number (got 'x')"),
    ("data: {train: {src: a, tgt: b}}\ntrain: {pad_to_multiple: 0}\n", "train.pad_to_multiple: must be > 0 (got 0)"),
    ("data: {train: {src: a, tgt: b}, upsample_factor: 5, upsample_pattern: '[.!?'}\n",
     "data.upsample_pattern: not a regular expression (unterminated character set"),
    ("data: {train: {src: a, tgt: b}}\ndecode: {nbest: 6}\n", "decode.nbest: must be <= decode.beam_size=5"),
    ("data: {train: {src: a, tgt: b}}\ndecode: {stopping: fast}\n", "decode.stopping: expected one of early, exact (got 'fast')"),
    ("data: {train: {src: a, tgt: b}}\nmodel: 3\n", "model: expected a mapping of keys (got 3)"),
    ("data: {train: {src: a, tgt: b}}\ntrain: {accum_steps: 1.5}\n", "train.accum_steps: expected a whole number"),
    ("data: {train: {src: a, tgt: b}}\nmodel: {norm_first: 'yes'}\n", "model.norm_first: expected true or false"),
])
def test_error_classes(tmp_path, text, expect):
    assert expect in error_of(write(tmp_path, text))


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "run_dir: x\nmodel:\n  d_model: 256\n   heads: 4\n")
    assert re.search(r"line \d+, column \d+: invalid YAML", error_of(p))


def test_missing_and_directory_config(tmp_path):
    assert "config file not found" in error_of(tmp_path / "nope.yaml")
    assert "is a directory" in error_of(tmp_path)


def test_set_without_equals_and_bad_key():
    msg = error_of(None, ["train.lr"])
    assert "--set 'train.lr': expected key.path=value" in msg
    assert "is not a key path" in error_of(None, ["a..b=1", "data.train.src=a", "data.train.tgt=b"])


def test_duration_parsing():
    assert parse_duration("90s") == 90 and parse_duration("12m") == 720 and parse_duration("2h") == 7200
    assert parse_duration(30) == 30 and parse_duration("1.5h") == 5400
    for bad in ("0", "soon", "-5m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_round_trip_and_differing_keys():
    cfg = load_config(None, ["data.train.src=a", "data.train.tgt=b"])
    again = from_plain_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert again == cfg
    other = apply_overrides(cfg, ["train.max_steps=5", "model.d_model=512", "model.heads=8"])
    assert differing_keys(cfg, other) == ["model.d_model", "model.heads"]  # max_steps may change on resume


def test_apply_overrides_checks(tmp_path):
    cfg = load_config(None, ["data.train.src=a", "data.train.tgt=b"])
    assert apply_overrides(cfg, ["decode.beam_size=2"]).decode.beam_size == 2
    with pytest.raises(ConfigError, match="decode.beam_size: must be > 0"):
        apply_overrides(cfg, ["decode.beam_size=0"])


def _fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = [a for a in (typing.get_args(hints[f.name]) or [hints[f.name]]) if dataclasses.is_dataclass(a)]
        if sub:
            yield from _fields(sub[0], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def test_base_yaml_documents_every_key_with_its_default():
    text = (ROOT / "configs/base.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    base = load_config(ROOT / "configs/base.yaml")
    defaults = to_dict(Config())
    flat_raw = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat_raw[f"{prefix}{k}"] = v

    walk(raw)
    for path, _ in _fields(Config):
        if path.startswith(("data.valid.", "data.test.")):
            continue  # the split keys are documented once, under data.train
        assert path in flat_raw, f"configs/base.yaml does not document {path}"
        if path not in ("data.train.src", "data.train.tgt"):  # base.yaml names the Ding files there
            node = defaults
            for part in path.split("."):
                node = node[part] if node is not None else None
                node = node[0] if isinstance(node, list) and path.startswith("data.train.") else node  # one corpus
            assert flat_raw[path] == node, f"{path}: base.yaml says {flat_raw[path]!r}, default is {node!r}"
    # every documented line carries a comment
    for line in text.splitlines():
        if re.match(r"^\s*\w+:\s*\S", line) and not line.strip().startswith("#") and "src: data/" not in line \
                and "tgt: data/" not in line:
            assert "#" in line, f"undocumented line in base.yaml: {line}"
    assert base.decode == DecodeConfig()


@pytest.mark.parametrize("name", ["base.yaml", "ding-de-en.yaml", "ding-finetune.yaml", "tiny-reverse.yaml"])
def test_shipped_configs_load(name):
    load_config(ROOT / "configs" / name)


# ----------------------------------------------------------------------------- fuzzing
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = ["run_dir", "seed", "data", "model", "train", "decode", "tokenizer", "src", "tgt", "heads", "d_model",
        "lr", "max_time", "beam_size", "valid", "adam_betas", "joint", "x"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
TREES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(st.sampled_from(KEYS), kids, max_size=5)),
                     max_leaves=25)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=TREES)
def test_fuzz_yaml_documents_give_config_or_config_error(tmp_path, doc):
    p = tmp_path / "fuzz.yaml"
    p.write_text(yaml.safe_dump(doc), encoding="utf-8")
    try:
        load_config(p)
    except ConfigError:
        pass


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes_give_config_or_config_error(tmp_path, data):
    p = tmp_path / "fuzz.yaml"
    p.write_bytes(data)
    try:
        load_config(p)
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None)
@given(items=st.lists(st.text(max_size=20), max_size=4))
def test_fuzz_overrides_give_config_or_config_error(items):
    try:
        load_config(None, ["data.train.src=a", "data.train.tgt=b", *items])
    except ConfigError:
        pass


def test_gradient_clipping_is_documented_as_a_departure_from_the_paper():
    """The paper does not clip gradients: base.yaml says so where clip_norm is (what clipping does is
    tested in test_train.py)."""
    from pathlib import Path

    base = (Path(__file__).resolve().parents[1] / "configs" / "base.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(base) if line.strip().startswith("clip_norm:"))
    assert any("NOTE (differs from paper)" in line for line in base[at - 3: at])
