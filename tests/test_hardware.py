"""precision: auto is decided by what the hardware reports, both answers tested with the check mocked.

No test here depends on bf16 being fast: the CPU under the tests may have native bf16 or not."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mtkit import hardware
from mtkit.hardware import native_bf16, resolve_precision
from tests.tinyrun import tiny_config

NATIVE = (True, "this CPU computes bf16 natively (AVX-512 BF16)")
EMULATED = (False, "this CPU has no native bf16 (AVX2)")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what the CPU check answers: cpu_bf16(NATIVE) or cpu_bf16(EMULATED)."""
    monkeypatch.delenv(hardware.NATIVE_BF16_ENV, raising=False)

    def set_answer(answer):
        monkeypatch.setattr(hardware, "_cpu_native_bf16", lambda: answer)

    return set_answer


@pytest.mark.parametrize("answer,expected", [(NATIVE, "bf16"), (EMULATED, "fp32")])
def test_auto_picks_bf16_only_where_native_and_says_why(cpu_bf16, answer, expected):
    cpu_bf16(answer)
    precision, why = resolve_precision("auto", "cpu")
    assert precision == expected
    assert why == f"train.precision auto -> {expected}: {answer[1]}"


@pytest.mark.parametrize("requested", ["fp32", "fp16"])
def test_explicit_precisions_other_than_bf16_are_kept_without_asking_the_hardware(monkeypatch, requested):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: pytest.fail("asked the hardware"))
    assert resolve_precision(requested, "cpu") == (requested, f"train.precision {requested}")


def test_explicit_bf16_without_native_bf16_is_kept_and_warned_once_with_its_measured_cost(
        cpu_bf16, monkeypatch, caplog):
    cpu_bf16(EMULATED)
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda device="cpu": 37.4)
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        precision, why = resolve_precision("bf16", "cpu", "decode.precision")
    assert precision == "bf16" and "as asked" in why
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "decode.precision bf16" in warnings[0] and "no native bf16 (AVX2)" in warnings[0]
    assert "37x slower than fp32" in warnings[0] and "auto or fp32" in warnings[0]
    caplog.clear()
    resolve_precision("bf16", "cpu", warn=False)  # the other processes of a distributed run
    assert not caplog.records


def test_explicit_bf16_with_native_bf16_is_quiet(cpu_bf16, monkeypatch, caplog):
    cpu_bf16(NATIVE)
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda device="cpu": pytest.fail("timed for nothing"))
    with caplog.at_level(logging.WARNING, logger="mtkit"):
        assert resolve_precision("bf16", "cpu")[0] == "bf16"
    assert not caplog.records


@pytest.mark.parametrize("features,onednn,expected", [
    ({"avx512_bf16": True}, True, (True, "this CPU computes bf16 natively (AVX-512 BF16)")),
    ({"amx_bf16": True, "avx512_bf16": True}, True, (True, "this CPU computes bf16 natively (AMX and AVX-512 BF16)")),
    ({}, True, (False, "this CPU has no native bf16 (AVX2)")),  # AVX-512 without BF16: oneDNN converts to fp32
    ({"avx512_bf16": True}, False, (False, "this CPU has no native bf16 (AVX2)")),  # e.g. ONEDNN_MAX_CPU_ISA=AVX2
])
def test_cpu_check_needs_the_bf16_units_and_onednn(monkeypatch, features, onednn, expected):
    monkeypatch.delenv(hardware.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: features, raising=False)  # torch < 2.6 has none
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")

    class Mkldnn:
        @staticmethod
        def _is_mkldnn_bf16_supported():
            return onednn

    class Ops:
        mkldnn = Mkldnn()

    monkeypatch.setattr(torch, "ops", Ops())
    assert native_bf16("cpu") == expected


@pytest.mark.parametrize("native", [True, False])
def test_cuda_answer_is_the_gpus_own_without_emulation(monkeypatch, native):
    monkeypatch.delenv(hardware.NATIVE_BF16_ENV, raising=False)
    calls = []

    def is_bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    ok, why = native_bf16("cuda:0")
    assert ok is native and calls == [False]
    assert why == ("Tesla T4 computes bf16 natively" if native else "Tesla T4 has no native bf16")
    assert resolve_precision("auto", "cuda:0")[0] == ("bf16" if native else "fp32")


@pytest.mark.parametrize("capability,native", [((8, 0), True), ((7, 5), False)])
def test_cuda_answer_on_a_torch_without_including_emulation(monkeypatch, capability, native):
    """torch < 2.3: is_bf16_supported() takes no argument; bf16 tensor cores start with Ampere (8.0)."""
    monkeypatch.delenv(hardware.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # would count emulation as support
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU")
    assert native_bf16("cuda")[0] is native


def test_cpu_check_reads_proc_cpuinfo_on_a_torch_without_get_capabilities(monkeypatch):
    monkeypatch.delenv(hardware.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: {"avx2": True, "amx_bf16": True})

    class Ops:
        class mkldnn:
            _is_mkldnn_bf16_supported = staticmethod(lambda: True)

    monkeypatch.setattr(torch, "ops", Ops())
    assert native_bf16("cpu") == (True, "this CPU computes bf16 natively (AMX)")


@pytest.mark.parametrize("value", ["0", "1"])
def test_environment_overrides_the_check(monkeypatch, value):
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, value)
    monkeypatch.setattr(hardware, "_cpu_native_bf16", lambda: pytest.fail("not overridden"))
    assert native_bf16("cpu") == (value == "1", f"MTKIT_NATIVE_BF16={value} is set")


def test_matmul_timing_is_bounded_by_one_call_past_its_time():
    """A dtype that is slow here stops growing the matrix: at most one call runs past the time."""
    flops, n = hardware.matmul_flops(torch.float32, seconds=0.0, max_n=2048)
    assert flops > 0 and n == 256  # a zero budget: the smallest size, one timed call
    assert hardware.bf16_slowdown() > 0


@pytest.mark.slow
@pytest.mark.parametrize("answer,expected", [(NATIVE, "bf16"), (EMULATED, "fp32")])
def test_training_says_which_precision_auto_chose_and_why(tmp_path, cpu_bf16, caplog, answer, expected):
    from mtkit.training.train import train

    cpu_bf16(answer)
    cfg = tiny_config(tmp_path, extra=["train.precision=auto", "train.max_steps=5", "train.eval_every=5"])
    with caplog.at_level(logging.INFO, logger="mtkit"):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records]
    assert f"precision: train.precision auto -> {expected}: {answer[1]}" in lines
    assert any(line.startswith("model: ") and f"precision {expected}," in line for line in lines)
    start = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["precision"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_evaluate_valid_reproduces_what_validation_logged(tmp_path, precision):
    """`mtkit evaluate best.pt --valid` decodes the run's dev subset (train.valid_max_sentences: 20
    of the 30 dev lines here) greedily in decode.precision, with the weights prepared as validation
    prepared its copy: BLEU and chrF are the logged ones exactly."""
    from typer.testing import CliRunner

    from mtkit.cli import app
    from mtkit.training.train import train

    train(tiny_config(tmp_path, extra=[f"decode.precision={precision}", "train.max_steps=150", "train.eval_every=50"]))
    valids = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    best = max((e for e in valids if e["event"] == "valid"), key=lambda e: e["bleu"])
    assert best["chrf"] > 5  # a model that outputs something to compare
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run/best.pt"), "--valid", "--json", "--device", "cpu",
                                 "-o", str(tmp_path / "hyps.txt")])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["n"] == 20 and (got["bleu"], got["chrf"]) == (best["bleu"], best["chrf"])
    assert len((tmp_path / "hyps.txt").read_text().splitlines()) == 20
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run/best.pt"), "--valid", "--beam", "4"])
    assert r.exit_code == 2 and "greedy" in r.stderr


@pytest.mark.slow
def test_a_run_started_in_bf16_can_resume_in_fp32(tmp_path):
    """train.precision may change on resume (a run started with bf16 on a machine without it)."""
    from mtkit.training.train import train

    train(tiny_config(tmp_path, extra=["train.precision=bf16", "train.max_steps=5", "train.eval_every=5"]))
    summary = train(tiny_config(tmp_path, extra=["train.precision=fp32", "train.max_steps=10",
                                                 "train.eval_every=5"]))
    assert summary["step"] == 10


def test_info_reports_versions_and_what_auto_picks(cpu_bf16):
    from typer.testing import CliRunner

    from mtkit.cli import app

    cpu_bf16(EMULATED)
    r = CliRunner().invoke(app, ["info", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["torch"] == torch.__version__
    assert {"mtkit", "sentencepiece", "sacrebleu", "datasets", "cpu", "cpu_capability", "torch_threads",
            "gpus"} <= set(report)
    assert (report["cpu_native_bf16"], report["auto_precision_cpu"]) == (False, "fp32")
    assert report["ct2_int8_vs_native_cpu"].endswith("x as fast (default-size model, beam 5; engine_speed.py)")
    r = CliRunner().invoke(app, ["info"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert "cpu_native_bf16:           no" in lines and "gpus:                      none" in lines
    value_columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}
    assert len(value_columns) == 1, "values aligned in one column"


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_validations_decoding_copy_is_evaluates_model_and_leaves_the_random_stream_alone(precision):
    from dataclasses import replace

    from mtkit.config import DecodeConfig, ModelConfig
    from mtkit.data.tokenizer import PAD_ID
    from mtkit.decoding.precision import prepare_for_decoding
    from mtkit.decoding.search import search
    from mtkit.model.transformer import Transformer
    from mtkit.training.validate import Validator

    class Tok:
        src_vocab_size = tgt_vocab_size = 20

    v = Validator.__new__(Validator)  # only what decoding_copy reads
    v.model_cfg = ModelConfig(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=1)
    v.tokenizer, v.device = Tok(), "cpu"
    v.decode = replace(DecodeConfig(), precision=precision, beam_size=1)
    model = Transformer(v.model_cfg, 20, 20, pad_id=PAD_ID)
    state = {k: t.clone() for k, t in model.state_dict().items()}
    before = torch.get_rng_state()
    copy = v.decoding_copy(model)
    assert torch.equal(torch.get_rng_state(), before)  # training's dropout masks do not shift
    assert not copy.training
    assert all(torch.equal(state[k], t) and t.dtype == torch.float32 for k, t in model.state_dict().items())
    # The copy decodes as `mtkit evaluate` would with the checkpoint: a fresh model prepared alike.
    fresh = Transformer(v.model_cfg, 20, 20, pad_id=PAD_ID)
    fresh.load_state_dict(state)
    fresh = prepare_for_decoding(fresh.eval(), precision)
    src = torch.randint(4, 20, (6, 7))
    assert search(copy, src, v.decode) == search(fresh, src, v.decode)
    if precision == "bf16":
        assert copy.decoder_layers[0].ffn.w_1.weight.dtype == torch.bfloat16


def test_best_time_warms_up_then_takes_the_fastest_pass_and_gives_up_on_a_slow_one():
    from mtkit.hardware import best_time

    calls = []
    assert best_time([lambda: calls.append(1)], tries=3) >= 0 and len(calls) == 4  # 1 warm-up + 3 timed
    calls.clear()
    best_time([lambda: calls.append(1)], tries=3, warm_up=False, give_up_after=-1.0)  # every pass is "too slow"
    assert len(calls) == 1
