"""Translation never loses, adds or reorders a line; validation BLEU equals evaluate's BLEU."""

import json

import pytest

from mtkit.decoding.settings import decode_settings
from mtkit.decoding.textio import read_chunks
from mtkit.decoding.translate import translate_file, translate_lines
from mtkit.errors import DataError
from mtkit.model.loading import load_model
from mtkit.training.train import train
from tests.tinyrun import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tr")
    cfg = tiny_config(root, extra=["train.max_steps=30", "train.eval_every=15"])
    train(cfg)
    model, tok, saved = load_model(root / "run", "cpu")
    return root, model, tok, saved


@pytest.mark.slow
def test_one_output_line_per_input_line_in_order(trained, tmp_path):
    root, model, tok, cfg = trained
    src = (root / "data/dev.src").read_text().splitlines()[:12]
    lines = [src[0], "", "   ", src[1], "x " * 3000, src[2], "ka\u2028ne\x0bbo\x1cdi", src[3]] + src[4:]
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(lines), encoding="utf-8")  # no final newline: the last line still counts
    out = tmp_path / "out.txt"
    decode = decode_settings(cfg.decode, greedy=True, batch_tokens=64)
    translate_file(model, tok, decode, inp, out)
    got = out.read_bytes().decode("utf-8").split("\n")
    assert got[-1] == "" and len(got) - 1 == len(lines)
    got = got[:-1]
    assert got[1] == "" and got[2] == ""  # empty and blank lines stay empty
    assert got[4] == ""  # too long to translate: empty, with a warning
    # every line equals its translation alone: nothing shifted, sorting undone
    for i, line in enumerate(lines):
        if i in (1, 2, 4):
            continue
        alone = translate_lines(model, tok, [line], decode)[0][0].text
        assert got[i] == alone, i
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.slow
def test_nbest_format(trained, tmp_path):
    root, model, tok, cfg = trained
    inp = tmp_path / "in.txt"
    inp.write_text("ba de fi\n\nko lu\n")
    out = tmp_path / "out.txt"
    translate_file(model, tok, decode_settings(cfg.decode, beam=3, nbest=2), inp, out)
    rows = [line.split(" ||| ") for line in out.read_text().splitlines()]
    assert [r[0] for r in rows] == ["0", "0", "1", "1", "2", "2"]
    assert all(len(r) == 3 and float(r[2]) <= 0.0 for r in rows)
    assert float(rows[0][2]) >= float(rows[1][2])


@pytest.mark.slow
def test_empty_input_gives_empty_output(trained, tmp_path):
    _, model, tok, cfg = trained
    inp, out = tmp_path / "empty.txt", tmp_path / "out.txt"
    inp.write_bytes(b"")
    translate_file(model, tok, cfg.decode, inp, out)
    assert out.exists() and out.read_bytes() == b""


@pytest.mark.slow
@pytest.mark.parametrize("data,what", [(b"ok\nbad \xff line\n", "line 2: invalid UTF-8"),
                                       (b"ok\nfine\nnul\x00here\n", "line 3: NUL byte")])
def test_bad_input_names_the_line_and_leaves_no_output(trained, tmp_path, data, what):
    _, model, tok, cfg = trained
    inp, out = tmp_path / "in.txt", tmp_path / "out.txt"
    inp.write_bytes(data)
    with pytest.raises(DataError, match=what):
        translate_file(model, tok, cfg.decode, inp, out)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


@pytest.mark.slow
def test_killed_job_leaves_previous_output_and_rerun_completes(trained, tmp_path, monkeypatch):
    import mtkit.decoding.translate as tr

    _, model, tok, cfg = trained
    inp, out = tmp_path / "in.txt", tmp_path / "out.txt"
    inp.write_text("".join(f"ba de {i % 7}\n" for i in range(50)))
    out.write_text("an older complete output\n")
    real = tr.translate_lines
    calls = {"n": 0}

    def dies_on_second_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "translate_lines", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        translate_file(model, tok, cfg.decode, inp, out, chunk_lines=20)
    assert out.read_text() == "an older complete output\n"  # untouched, and no partial file posing as done
    assert not list(tmp_path.glob(".*partial"))
    monkeypatch.setattr(tr, "translate_lines", real)
    translate_file(model, tok, cfg.decode, inp, out)
    assert len(out.read_text().splitlines()) == 50


def test_read_chunks_splits_on_newline_only():
    import io

    data = "a\u2028b\nc\x0bd\r\ne\x1c\n".encode()
    chunks = list(read_chunks(io.BytesIO(data), "x", chunk_lines=2))
    assert chunks == [(1, ["a\u2028b", "c\x0bd"]), (3, ["e\x1c"])]


@pytest.mark.slow
def test_validation_bleu_equals_evaluate_bleu(trained):
    """The dev BLEU logged for best.pt is what `mtkit evaluate best.pt --greedy` reports on the same dev
    pairs (`--valid` takes them from the config: test_hardware.py)."""
    from typer.testing import CliRunner

    from mtkit.cli import app

    root, *_ = trained
    events = [json.loads(x) for x in (root / "run/metrics.jsonl").read_text().splitlines()]
    valids = [e for e in events if e["event"] == "valid"]
    best = max(valids, key=lambda e: e["bleu"])
    # the tiny config validates on the first 20 dev pairs
    dev_src, dev_ref = root / "dev20.src", root / "dev20.tgt"
    dev_src.write_text("".join(x + "\n" for x in (root / "data/dev.src").read_text().splitlines()[:20]))
    dev_ref.write_text("".join(x + "\n" for x in (root / "data/dev.tgt").read_text().splitlines()[:20]))
    result = CliRunner().invoke(app, ["evaluate", str(root / "run/best.pt"), "--src", str(dev_src),
                                      "--ref", str(dev_ref), "--greedy", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["bleu"] == pytest.approx(best["bleu"], abs=1e-9)
    assert scores["chrf"] == pytest.approx(best["chrf"], abs=1e-9)
    assert {"bleu", "chrf", "ter", "signature"} <= set(scores)
    assert scores["signature"]["bleu"].startswith("nrefs:1|")


@pytest.mark.slow
def test_decode_speed_benchmark_runs(trained):
    import subprocess
    import sys
    from pathlib import Path

    root, *_ = trained
    script = Path(__file__).resolve().parents[1] / "bench/decode_speed.py"
    r = subprocess.run([sys.executable, str(script), str(root / "run"), "--src", str(root / "data/test.src"),
                        "--ref", str(root / "data/test.tgt"), "--beams", "1", "2", "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    assert [row["beam"] for row in figures["results"]] == [1, 2]
    assert all(row["sentences_per_s"] > 0 and "bleu" in row for row in figures["results"])
    # Batches of N length-sorted sentences (as OpenNMT-py and CTranslate2 batch) translate the same:
    # search results do not depend on what else is in the batch.
    r = subprocess.run([sys.executable, str(script), str(root / "run"), "--src", str(root / "data/test.src"),
                        "--ref", str(root / "data/test.tgt"), "--beams", "1", "2", "--threads", "1",
                        "--batch-sents", "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    by_sents = json.loads(r.stdout.strip().splitlines()[-1])
    assert by_sents["batching"] == "3 sentences"
    assert [row["bleu"] for row in by_sents["results"]] == [row["bleu"] for row in figures["results"]]


@pytest.mark.slow
def test_length_diagnosis_benchmark_runs_and_scores_what_search_scores(trained):
    import subprocess
    import sys
    from pathlib import Path

    root, model, tok, cfg = trained
    bench = Path(__file__).resolve().parents[1] / "bench"
    r = subprocess.run([sys.executable, str(bench / "length_diagnosis.py"), str(root / "run"), "--src",
                        str(root / "data/test.src"), "--ref", str(root / "data/test.tgt"), "--alphas", "0", "1",
                        "--beam", "2", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(report["search"]) == ["greedy", "beam2 alpha 0", "beam2 alpha 1"]
    assert all(row["ratio"] >= 0 and 0 <= row["bp"] <= 1 for row in report["search"].values())
    assert 0 <= report["short_preferred_by_model"] <= 1 and 0 <= report["premature_eos_top_share"] <= 1
    assert 0 < report["mean_p_eos_at_end"] <= 1
    # Its batched, padded teacher-forced scores equal each sentence scored alone, and EOS shares are exact.
    sys.path.insert(0, str(bench))
    import torch
    from length_diagnosis import reference_scores

    from mtkit.data.tokenizer import BOS_ID, EOS_ID

    src_ids = tok.encode_src((root / "data/test.src").read_text().splitlines())
    ref_ids = tok.encode_tgt((root / "data/test.tgt").read_text().splitlines())
    scores, eos = reference_scores(model, src_ids, ref_ids, batch=7)
    alone, top, n = [], 0, 0
    with torch.inference_mode():
        for s, t in zip(src_ids, ref_ids, strict=True):
            logp = model(torch.tensor([s + [EOS_ID]]), torch.tensor([[BOS_ID] + t]))[0].log_softmax(-1)  # (T, V)
            alone.append(float(logp[torch.arange(len(t) + 1), torch.tensor(t + [EOS_ID])].sum()))
            top += int((logp[:-1].argmax(-1) == EOS_ID).sum())
            n += len(t)
    assert scores == pytest.approx(alone, abs=1e-4)
    assert eos["premature_eos_top_share"] == pytest.approx(top / n)


@pytest.mark.slow
def test_bf16_decoding_through_the_cli(trained, tmp_path):
    """`--set decode.precision=bf16` translates with bf16 weights: one line per input, scores from an
    fp32 log-softmax, and (on this small model) the same greedy output as fp32 for most lines."""
    from typer.testing import CliRunner

    from mtkit.cli import app

    root, *_ = trained
    src = (root / "data/dev.src").read_text().splitlines()[:20]
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(src) + "\n", encoding="utf-8")
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.txt"
        r = CliRunner().invoke(app, ["translate", str(root / "run"), "-i", str(inp), "-o", str(out), "--greedy",
                                     "--set", f"decode.precision={precision}"])
        assert r.exit_code == 0, r.output
        outs[precision] = out.read_text(encoding="utf-8").splitlines()
    assert len(outs["bf16"]) == len(src)
    assert sum(a == b for a, b in zip(outs["fp32"], outs["bf16"])) >= len(src) // 2


@pytest.mark.slow
def test_bf16_on_a_cpu_without_it_translates_after_one_loud_warning(trained, tmp_path):
    """An explicit decode.precision=bf16 where bf16 is emulated (forced by MTKIT_NATIVE_BF16=0):
    one `warning: ` line on stderr with the measured cost, and the translation still done."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, *_ = trained
    env = {**os.environ, "MTKIT_NATIVE_BF16": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "mtkit", "translate", str(root / "run"), "--greedy",
                        "--set", "decode.precision=bf16"], input="ba de\nko\n", capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split("\n")) == 3
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, r.stderr
    assert warnings[0].startswith("warning: decode.precision bf16: MTKIT_NATIVE_BF16=0 is set, so bf16 matmuls"
                                  " are emulated, ") and "set decode.precision to auto or fp32" in warnings[0]
    r = subprocess.run([sys.executable, "-m", "mtkit", "translate", str(root / "run"), "--greedy"],
                       input="ba de\n", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


@pytest.mark.slow
def test_nbest_gives_exactly_n_lines_per_input(trained, tmp_path):
    """The --nbest contract: N lines for every input, also for empty input (score 0) and when the
    search can only find fewer outputs (limit 0: only the empty output, the rest scored -inf)."""
    _, model, tok, cfg = trained
    inp, out = tmp_path / "in.txt", tmp_path / "out.txt"
    inp.write_text("ba de fi\n\nko lu\n")
    from dataclasses import replace

    decode = replace(decode_settings(cfg.decode, beam=3, nbest=3), max_len_a=0.0, max_len_b=0)
    translate_file(model, tok, decode, inp, out)
    rows = [line.split(" ||| ") for line in out.read_text().splitlines()]
    assert [r[0] for r in rows] == ["0"] * 3 + ["1"] * 3 + ["2"] * 3
    assert all(r[1] == "" for r in rows)
    assert [r[2] for r in rows[3:6]] == ["0.0000"] * 3  # empty input: N empty hypotheses, score 0
    assert float(rows[0][2]) > float("-inf") and rows[1][2] == rows[2][2] == "-inf"


@pytest.mark.slow
def test_translate_answers_each_line_from_a_pipe_before_the_input_ends(trained):
    """A program that writes one line to `mtkit translate` and waits gets its translation at once
    (stdin from a pipe or terminal is not read in 20,000-line chunks)."""
    import subprocess
    import sys
    import threading

    root, model, tok, cfg = trained
    proc = subprocess.Popen([sys.executable, "-m", "mtkit", "-q", "translate", str(root / "run"), "--greedy"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    proc.stdin.write(b"ba de fi\n")
    proc.stdin.flush()
    reader.join(timeout=120)  # the input is still open: only an answer per line ends this wait
    assert got, "no output line while the input was still open"
    expected = translate_lines(model, tok, ["ba de fi", "ko lu"], decode_settings(cfg.decode, greedy=True))
    assert got[0].decode().rstrip("\n") == expected[0][0].text
    out, err = proc.communicate(b"\nko lu", timeout=120)  # an empty line, then a last line without newline
    assert proc.returncode == 0, err.decode()
    assert out.decode().split("\n") == ["", expected[1][0].text, ""]


@pytest.mark.slow
def test_two_workers_translate_as_one_and_leave_the_model_in_its_mode(trained, monkeypatch):
    from dataclasses import replace

    import torch

    from mtkit.decoding import translate

    root, model, tok, cfg = trained
    modes = []

    def search(model, *args):  # every batch is searched in eval mode, switched before the workers start
        modes.append(model.training)
        return real_search(model, *args)

    real_search = translate.search
    monkeypatch.setattr(translate, "search", search)
    src = (root / "data/dev.src").read_text().splitlines()[:40]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small = decode_settings(cfg.decode, beam=3, batch_tokens=30)  # many batches, so both workers get some
        one = translate_lines(model, tok, src, replace(small, workers=1))
        model.train()  # validation's case: the mode is switched once, not by each worker
        two = translate_lines(model, tok, src, replace(small, workers=2))
        assert model.training and len(modes) > 4 and not any(modes)
        model.eval()
    finally:
        torch.set_num_threads(threads)
    assert [[t.text for t in ts] for ts in two] == [[t.text for t in ts] for ts in one]
    assert [t.score for ts in two for t in ts] == pytest.approx([t.score for ts in one for t in ts], abs=1e-4)


@pytest.mark.slow
def test_translate_suggests_ctranslate2_only_where_it_is_clearly_faster(trained, monkeypatch, caplog):
    from mtkit.decoding import engine_speed
    from mtkit.decoding.loading import load_for_decoding

    root, *_ = trained
    for speedup, said in ((2.0, True), (1.0, False), (None, False)):
        monkeypatch.setattr(engine_speed, "ct2_int8_speedup", lambda s=speedup: s)
        caplog.clear()
        with caplog.at_level("INFO", logger="mtkit"):
            load_for_decoding(root / "run", "cpu")
        hints = [r.message for r in caplog.records if "CTranslate2 int8 decodes" in r.message]
        assert bool(hints) == said, (speedup, hints)
    assert "about 2.0x as fast" in engine_speed.hint(root / "run", 2.0)


@pytest.mark.slow
def test_cli_ensembles_translate_and_evaluate(trained, tmp_path):
    """`mtkit translate A B` with A == B gives A's translations; `mtkit evaluate A B` scores an ensemble;
    a --weights count that does not fit is one error line."""
    from typer.testing import CliRunner

    from mtkit.cli import app

    root, *_ = trained
    run = root / "run"
    src = root / "data/test.src"
    alone, pair = tmp_path / "alone.txt", tmp_path / "pair.txt"
    for models, out in (([run / "last.pt"], alone), ([run / "last.pt", run / "last.pt"], pair)):
        r = CliRunner().invoke(app, ["translate", *map(str, models), "-i", str(src), "-o", str(out), "--device", "cpu",
                                     "--set", "decode.precision=fp32"])
        assert r.exit_code == 0, r.output
    assert pair.read_text() == alone.read_text()
    r = CliRunner().invoke(app, ["evaluate", str(run / "last.pt"), str(run / "best.pt"), "--weights", "0.5,0.5",
                                 "--src", str(src), "--ref", str(root / "data/test.tgt"), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["n"] == len(src.read_text().splitlines())
    r = CliRunner().invoke(app, ["translate", str(run / "last.pt"), "--weights", "1,2", "-i", str(src)])
    assert r.exit_code != 0 and r.output.strip().splitlines()[-1] == \
        "error: --weights: give one weight per model (1 models, 2 weights)"


@pytest.mark.slow
def test_cli_sampling_is_reproducible_and_its_flags_need_sample(trained, tmp_path):
    from typer.testing import CliRunner

    from mtkit.cli import app

    root, *_ = trained
    args = ["translate", str(root / "run/last.pt"), "-i", str(root / "data/test.src"), "--device", "cpu"]
    outs = []
    for extra in (["--batch-tokens", "16"], ["--batch-tokens", "4096"]):
        r = CliRunner().invoke(app, [*args, "--sample", "--nbest", "2", "--topp", "0.9", "--seed", "5", *extra])
        assert r.exit_code == 0, r.output
        outs.append(r.stdout)
    # The same samples whatever the batches; their scores to float rounding (fp32 matmuls of other
    # batch shapes may round differently in the last place).
    rows = [[line.split(" ||| ") for line in out.splitlines()] for out in outs]
    assert [r[:2] for r in rows[0]] == [r[:2] for r in rows[1]]
    assert all(abs(float(a[2]) - float(b[2])) < 1e-3 for a, b in zip(rows[0], rows[1], strict=True))
    assert len(rows[0]) == 2 * len((root / "data/test.src").read_text().splitlines())
    r = CliRunner().invoke(app, [*args, "--topk", "5"])
    assert r.exit_code != 0
    assert r.output.strip().splitlines()[-1] == "error: --topk, --topp, --temperature and --seed shape sampling; add --sample"
