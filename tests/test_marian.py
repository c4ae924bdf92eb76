"""mtkit import: a Marian model built by transformers gives the same tokens, encoder output, logits
and translations in mtkit as in transformers itself."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mtkit.config import DecodeConfig, from_plain_dict
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from mtkit.decoding.search import search
from mtkit.errors import CheckpointError, ConfigError
from mtkit.model.marian import import_marian
from mtkit.model.transformer import Transformer
from tests.hf_marian import build_marian_dir, sentences

ROOT = Path(__file__).resolve().parents[1]
transformers = pytest.importorskip("transformers", reason="transformers is an optional extra (make install has it)")


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    """(directory, transformers model, MarianTokenizer, mtkit model, mtkit tokenizer, mtkit id -> Marian id)."""
    d = build_marian_dir(tmp_path_factory.mktemp("marian") / "model")
    hf = transformers.MarianMTModel.from_pretrained(d).eval()
    hf_tok = transformers.MarianTokenizer.from_pretrained(d)
    state = import_marian(d)
    cfg = from_plain_dict(state["config"])
    tok = Tokenizer.from_bytes(state["tokenizer"])
    model = Transformer(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
    model.load_state_dict(state["model"])
    marian_ids = json.loads((d / "vocab.json").read_text())
    specials = {PAD_ID: marian_ids["<pad>"], UNK_ID: marian_ids["<unk>"], BOS_ID: marian_ids["<pad>"],
                EOS_ID: marian_ids["</s>"]}
    to_marian = [specials.get(i, marian_ids.get(p)) for i, p in enumerate(tok.pieces("tgt"))]
    return d, hf, hf_tok, model.eval(), tok, to_marian


def test_import_reads_the_architecture_into_named_model_options(marian):
    d, hf, *_ = marian
    cfg = from_plain_dict(import_marian(d)["config"])
    m = cfg.model
    assert (m.d_model, m.heads, m.d_ff, m.encoder_layers, m.decoder_layers) == (64, 4, 128, 2, 2)
    assert (m.activation, m.norm_first, m.attention_bias, m.output_bias, m.scale_embeddings, m.positions) == (
        "swish", False, True, True, True, "halves")
    assert (cfg.data.src_lang, cfg.data.tgt_lang, cfg.decode.beam_size) == ("de", "en", 4)


def test_tokenization_equals_marian_tokenizers_ids(marian):
    _, _, hf_tok, _, tok, to_marian = marian
    texts = sentences(300, seed=7) + ["haus xyzq", "Über", ""]  # unknown characters, an empty line
    ours = tok.encode_src(texts)
    theirs = [hf_tok(t)["input_ids"] for t in texts]
    assert [[to_marian[i] for i in x] + [to_marian[EOS_ID]] for x in ours] == theirs
    assert tok.decode_tgt(ours[:50]) == hf_tok.batch_decode([t[:-1] for t in theirs[:50]], skip_special_tokens=True)


def test_the_vocabulary_table_survives_bytes_files_and_pickling(marian, tmp_path):
    import pickle

    _, _, _, _, tok, _ = marian
    texts = sentences(20, seed=9)
    tok.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["spm.src.model", "spm.tgt.model", "vocab.json"]
    for copy in (Tokenizer.load(tmp_path / "tok"), Tokenizer.from_bytes(tok.to_bytes()), pickle.loads(pickle.dumps(tok))):
        assert copy.encode_src(texts) == tok.encode_src(texts) and copy.pieces("tgt") == tok.pieces("tgt")
        assert copy.joint and copy.src_vocab_size == tok.tgt_vocab_size == len(tok.pieces("src"))


def test_encoder_output_and_logits_equal_transformers(marian):
    _, hf, hf_tok, model, tok, to_marian = marian
    texts = sentences(16, seed=3)
    batch = hf_tok(texts, return_tensors="pt", padding=True)
    src = torch.tensor([[i for i in x] for x in _pad([x + [EOS_ID] for x in tok.encode_src(texts)], PAD_ID)])
    tgt = [[BOS_ID] + x[:6] for x in tok.encode_src(sentences(16, seed=4))]
    tgt_in = torch.tensor(_pad(tgt, PAD_ID))
    with torch.no_grad():
        memory, _ = model.encode(src)
        theirs = hf.model.encoder(**batch).last_hidden_state
        real = batch["attention_mask"].bool()
        assert (memory[real] - theirs[real]).abs().max() < 1e-4
        logits = model(src, tgt_in)  # (B, T, V) over mtkit's ids
        hf_logits = hf(**batch, decoder_input_ids=torch.tensor([[to_marian[i] for i in row] for row in tgt_in.tolist()]),
                       decoder_attention_mask=(tgt_in != PAD_ID).long()).logits
    real_t = tgt_in != PAD_ID
    columns = torch.tensor(to_marian)
    outputs = [i for i in range(len(to_marian)) if i != BOS_ID]  # BOS is mtkit's alone: never an output
    assert (logits[real_t][:, outputs] - hf_logits[real_t][:, columns[outputs]]).abs().max() < 1e-4
    # Log-probabilities too: the softmax runs over Marian's pieces only (BOS's bias is -1e9).
    ours = torch.log_softmax(logits[real_t], -1)[:, outputs]
    theirs = torch.log_softmax(hf_logits[real_t], -1)[:, columns[outputs]]
    assert (ours - theirs).abs().max() < 1e-4


def test_greedy_and_beam_translations_equal_transformers_generate(marian):
    _, hf, hf_tok, model, tok, to_marian = marian
    texts = sentences(200, seed=11)
    limit = 12
    ours_greedy, ours_beam = [], []
    for start in range(0, len(texts), 50):
        part = texts[start:start + 50]
        src = torch.tensor(_pad([x + [EOS_ID] for x in tok.encode_src(part)], PAD_ID))
        for beams, out in ((1, ours_greedy), (4, ours_beam)):
            cfg = DecodeConfig(beam_size=beams, length_penalty=0.0, max_len_a=0.0, max_len_b=limit, stopping="exact")
            out += [[to_marian[i] for i in hyps[0].tokens] for hyps in search(model, src, cfg)]
    theirs = {}
    for beams in (1, 4):
        batch = hf_tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            # mtkit's limit: `limit` tokens, then EOS forced; transformers': limit + 1 new tokens, the last forced EOS.
            beam = {"length_penalty": 0.0, "early_stopping": False} if beams > 1 else {}
            generated = hf.generate(**batch, num_beams=beams, do_sample=False, max_new_tokens=limit + 1,
                                    forced_eos_token_id=to_marian[EOS_ID], **beam)
        theirs[beams] = [_strip(row, to_marian) for row in generated.tolist()]
    assert ours_greedy == theirs[1]
    assert len({tuple(x) for x in ours_greedy}) > 20  # the outputs differ between sentences: a real check
    # Beam search: the same best hypothesis wherever it ends before the length limit. At the limit
    # transformers forces EOS after the log-softmax, so the forced EOS costs nothing there, where
    # mtkit counts its log-probability; hypotheses cut by the limit may then rank differently.
    finished = [(a, b) for a, b in zip(ours_beam, theirs[4], strict=True) if len(a) < limit and len(b) < limit]
    assert len(finished) > 100
    assert all(a == b for a, b in finished)


@pytest.mark.parametrize("problem, message", [
    ("not_marian", "model_type is 'bart', not 'marian'"),
    ("no_spm", "target.spm: not found"),
    ("activation", "activation_function 'tanh' is not supported"),
    ("no_config", "config.json: not found"),
    ("no_key", "config.json: lacks 'd_model'"),
    ("misfit", "the weights do not fit its config.json"),
])
def test_bad_marian_directories_are_one_error_each(marian, tmp_path, problem, message):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(marian[0], d)
    config = json.loads((d / "config.json").read_text())
    if problem == "not_marian":
        config["model_type"] = "bart"
    elif problem == "activation":
        config["activation_function"] = "tanh"
    elif problem == "no_key":
        del config["d_model"]
    elif problem == "misfit":
        config["encoder_ffn_dim"] = config["decoder_ffn_dim"] = 65
    (d / "config.json").write_text(json.dumps(config))
    if problem == "no_spm":
        (d / "target.spm").unlink()
    if problem == "no_config":
        (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match=message):
        import_marian(d)
    if problem == "no_spm":  # through the command: one line, exit code 1, nothing written
        from typer.testing import CliRunner

        from mtkit.cli import app

        r = CliRunner().invoke(app, ["import", str(d), "-o", str(tmp_path / "m.pt")])
        assert r.exit_code == 1 and r.output.count("\n") == 1 and r.output.startswith("error: ")
        assert "target.spm: not found" in r.output and not (tmp_path / "m.pt").exists()


def _pad(rows, pad):
    width = max(len(r) for r in rows)
    return [r + [pad] * (width - len(r)) for r in rows]


def _strip(row, to_marian):
    """A generated row without its start token, padding and the final EOS."""
    row = row[1:]
    eos = to_marian[EOS_ID]
    return row[: row.index(eos)] if eos in row else row


def test_cli_import_then_translate_and_export_to_ctranslate2(marian, tmp_path):
    from typer.testing import CliRunner

    from mtkit.cli import app
    from mtkit.decoding.ct2 import export, load_engine

    d, hf, hf_tok, model, tok, to_marian = marian
    runner = CliRunner()
    pt = tmp_path / "opus.pt"
    r = runner.invoke(app, ["import", str(d), "-o", str(pt)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["import", str(d), "-o", str(pt)])  # nothing saved is overwritten silently
    assert r.exit_code != 0 and "exists; give another path, or --force" in r.output
    lines = sentences(40, seed=21)
    (tmp_path / "in.de").write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["translate", str(pt), "-i", str(tmp_path / "in.de"), "-o", str(tmp_path / "out.en"),
                            "--set", "decode.beam_size=1", "--set", "decode.precision=fp32"])
    assert r.exit_code == 0, r.output
    ours = (tmp_path / "out.en").read_text().splitlines()
    with torch.no_grad():
        generated = hf.generate(**hf_tok(lines, return_tensors="pt", padding=True), num_beams=1, do_sample=False,
                                max_new_tokens=40)
    theirs = hf_tok.batch_decode(generated, skip_special_tokens=True)
    assert ours == theirs
    r = runner.invoke(app, ["export", str(pt), "--format", "huggingface", "-o", str(tmp_path / "hf")])
    assert r.exit_code == 0 and (tmp_path / "hf" / "model.safetensors").is_file(), r.output
    # CTranslate2: the options of the imported architecture (biases, swish, sinusoid halves, logits
    # bias) reach its spec, so it translates as mtkit does.
    pytest.importorskip("ctranslate2", reason="the ct2 extra: `pip install -e .[ct2]` (make install does)")
    engine, tok2, decode, _ = load_engine(export(pt, tmp_path / "ct2"), "cpu")
    ids = tok.encode_src(lines)
    greedy = DecodeConfig(beam_size=1, max_len_a=0.0, max_len_b=30)
    src = torch.tensor(_pad([x + [EOS_ID] for x in ids], PAD_ID))
    assert [h[0].tokens for h in engine.search_ids(ids, greedy)] == [h[0].tokens for h in search(model, src, greedy)]


@pytest.mark.slow
def test_fine_tuning_an_imported_model_learns_a_task_and_resumes_exactly(marian, tmp_path):
    from mtkit.config import load_config
    from mtkit.model.checkpoint import load_checkpoint, save_checkpoint
    from mtkit.training.runlog import read_metrics
    from mtkit.training.train import train

    d, _, _, _, tok, _ = marian
    parent = tmp_path / "opus.pt"
    save_checkpoint(parent, import_marian(d))
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in (("train", 2000, 31), ("dev", 60, 32)):
        (data / f"{name}.de").write_text("\n".join(sentences(n, seed=seed)) + "\n")  # the copy task
        (data / f"{name}.en").write_text("\n".join(sentences(n, seed=seed)) + "\n")

    def config(run: str, steps: int, every: int = 100):
        # The model and tokenizer come from the checkpoint: the config names the data and training only.
        return load_config(None, [
            f"run_dir={tmp_path / run}", f"data.train.src={data / 'train.de'}", f"data.train.tgt={data / 'train.en'}",
            f"data.valid.src={data / 'dev.de'}", f"data.valid.tgt={data / 'dev.en'}", "data.num_proc=1",
            "train.batch_tokens=1024", "train.lr=0.002", "train.warmup_steps=50", f"train.max_steps={steps}",
            f"train.eval_every={every}", "train.log_every=50", "train.threads=1", "train.precision=fp32",
            "train.device=cpu", "train.valid_max_sentences=60", "decode.precision=fp32", "decode.beam_size=1",
            "model.dropout=0.0"])

    train(config("tuned", 200, every=50), init_from=str(parent))
    assert load_checkpoint(tmp_path / "tuned/last.pt")["tokenizer"] == tok.to_bytes()  # the imported table, kept
    events = read_metrics(tmp_path / "tuned/metrics.jsonl")
    losses = [e["loss"] for e in events if e["event"] == "train"]
    bleu = [e["bleu"] for e in events if e["event"] == "valid"]
    assert losses[-1] < 0.85 * losses[0] and bleu[-1] > bleu[0] + 3, (losses, bleu)
    # Exact resume: 20 updates at once equal 10, a stop, and 10 more.
    train(config("straight", 20, every=10), init_from=str(parent))
    train(config("resumed", 10, every=10), init_from=str(parent))
    train(config("resumed", 20, every=10), init_from=str(parent))
    a, b = (load_checkpoint(tmp_path / f"{r}/last.pt")["model"] for r in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The fine-tuned model (post-norm, trained in mtkit) loads in transformers and translates alike.
    from mtkit.model.marian_export import export_huggingface

    hf_dir = export_huggingface(tmp_path / "tuned/last.pt", tmp_path / "tuned-hf")
    lines = sentences(30, seed=43)
    assert _hf_greedy(hf_dir, lines, 16) == _mtkit_greedy(tmp_path / "tuned/last.pt", lines, 16)
    # The shipped fine-tuning config names no model or tokenizer key: it takes an imported model as it is.
    from mtkit.training.rundir import config_for_init

    shipped = config_for_init(load_config(ROOT / "configs/ding-finetune.yaml"), parent, load_checkpoint(parent))
    assert shipped.model == replace(from_plain_dict(load_checkpoint(parent)["config"]).model, dropout=0.1)


def _hf_greedy(directory, lines, new_tokens):
    """transformers' own greedy translations of `lines` with the model and tokenizer saved in `directory`."""
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        out = model.generate(**tokenizer(lines, return_tensors="pt", padding=True), num_beams=1, do_sample=False,
                             max_new_tokens=new_tokens)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def _mtkit_greedy(path, lines, new_tokens):
    from mtkit.decoding.translate import translate_lines
    from mtkit.model.loading import load_model

    model, tok, _ = load_model(path)
    limit = DecodeConfig(beam_size=1, max_len_a=0.0, max_len_b=new_tokens - 1, precision="fp32")
    return [ts[0].text for ts in translate_lines(model, tok, lines, limit)]


def test_huggingface_export_of_an_imported_model_loads_and_translates_alike(marian, tmp_path):
    from mtkit.model.checkpoint import save_checkpoint
    from mtkit.model.marian_export import export_huggingface

    save_checkpoint(tmp_path / "opus.pt", import_marian(marian[0]))
    out = export_huggingface(tmp_path / "opus.pt", tmp_path / "hf")
    lines = sentences(60, seed=41)
    assert _hf_greedy(out, lines, 20) == _mtkit_greedy(tmp_path / "opus.pt", lines, 20)
    # ... and imported again, it is the same checkpoint's model.
    again, first = import_marian(out)["model"], import_marian(marian[0])["model"]
    assert all(torch.allclose(again[k], first[k]) for k in first)


@pytest.mark.parametrize("positions", ["interleaved", "halves"])
def test_huggingface_export_of_an_mtkit_post_norm_model(tmp_path, tiny_tokenizer, positions):
    from mtkit.config import Config, ModelConfig, to_dict
    from mtkit.model.checkpoint import save_checkpoint
    from mtkit.model.marian_export import export_huggingface

    # A random post-norm model with mtkit's defaults otherwise (relu, no attention biases), its
    # biases and layer norms random too so that every permuted weight counts.
    torch.manual_seed(0)
    model_cfg = ModelConfig(d_model=32, heads=4, d_ff=64, encoder_layers=2, decoder_layers=2, norm_first=False,
                            positions=positions)
    model = Transformer(model_cfg, tiny_tokenizer.src_vocab_size, tiny_tokenizer.tgt_vocab_size)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.3)
            else:
                p.mul_(3.0)  # sharper distributions: greedy outputs differ between sentences
    cfg = Config(model=model_cfg, data=Config().data.__class__(train=()))
    save_checkpoint(tmp_path / "m.pt", {"config": to_dict(cfg), "model": model.state_dict(),
                                        "tokenizer": tiny_tokenizer.to_bytes(), "step": 0})
    out = export_huggingface(tmp_path / "m.pt", tmp_path / "hf")
    lines = ["das ist ein haus", "der hund", "ich sehe die katze nicht", "a b c"]
    ours = _mtkit_greedy(tmp_path / "m.pt", lines, 12)
    assert _hf_greedy(out, lines, 12) == ours and len(set(ours)) > 1


def test_huggingface_export_refuses_a_pre_norm_model_in_one_line(tmp_path, tiny_tokenizer):
    from mtkit.config import Config, to_dict
    from mtkit.model.checkpoint import save_checkpoint
    from mtkit.model.marian_export import export_huggingface

    cfg = Config()
    model = Transformer(cfg.model, tiny_tokenizer.src_vocab_size, tiny_tokenizer.tgt_vocab_size)
    save_checkpoint(tmp_path / "m.pt", {"config": to_dict(cfg), "model": model.state_dict(),
                                        "tokenizer": tiny_tokenizer.to_bytes(), "step": 0})
    with pytest.raises(ConfigError, match="a pre-norm model .* has no Marian form in transformers"):
        export_huggingface(tmp_path / "m.pt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
