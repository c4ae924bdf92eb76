"""Every kind of file mtkit writes for a user, each written as an "old" or a "new" version.

tests/reliability/test_writes.py kills each writer mid-write (and just before its rename) in a
child process and checks that the target holds the old version or the new one, never a mix, and
that nothing is left beside it. `write(kind, folder, version)` writes and returns the target;
`snapshot(target)` is what a reader sees there.
"""

from __future__ import annotations

import json
from pathlib import Path

KINDS = ("text", "checkpoint", "link", "tokenizer", "data_cache", "ding", "translation", "ct2_export",
         "manifest", "curves", "metrics_rewrite")


def write(kind: str, folder: Path, version: str) -> Path:
    """Write `version` ("old" or "new") of `kind` into `folder`; the path a reader looks at."""
    folder.mkdir(parents=True, exist_ok=True)
    return globals()[f"_{kind}"](folder, version)


def snapshot(target: Path) -> dict[str, bytes]:
    """Relative name -> bytes of the target file, or of every file under the target folder."""
    if target.is_file():
        return {target.name: target.read_bytes()}
    if target.is_dir():
        return {str(p.relative_to(target)): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()}
    return {}


def leftovers(folder: Path) -> list[str]:
    """Temporaries anywhere under `folder` (files.py names them .NAME.PID-XXXX.tmp)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))


def _text(folder: Path, version: str) -> Path:
    from mtkit import files

    files.write_text(folder / "config.yaml", f"version: {version}\n" * 20_000)
    return folder / "config.yaml"


def _checkpoint(folder: Path, version: str) -> Path:
    import torch

    from mtkit.model.checkpoint import save_checkpoint

    weight = 1.0 if version == "old" else 2.0
    save_checkpoint(folder / "last.pt", {"config": {}, "tokenizer": {}, "model": {"w": torch.full((500_000,), weight)}})
    return folder / "last.pt"


def _link(folder: Path, version: str) -> Path:
    from mtkit import files

    files.write_text(folder / f"{version}.pt", version * 100_000)
    files.link(folder / f"{version}.pt", folder / "best.pt")
    return folder / "best.pt"


def _tokenizer(folder: Path, version: str) -> Path:
    from mtkit.config import TokenizerConfig
    from mtkit.data.tokenizer_training import train_tokenizer

    letters = "abcdefgh" if version == "old" else "mnopqrstuvw"
    words = [" ".join(letters[(i * k) % len(letters)] * (1 + k % 3) for k in range(1, 6)) for i in range(400)]
    tok = train_tokenizer(TokenizerConfig(vocab_size=30), words, words)
    tok.save(folder / "tokenizer")
    return folder / "tokenizer"


def _data_cache(folder: Path, version: str) -> Path:
    from mtkit.config import DataConfig, SplitConfig
    from mtkit.data.sources import load_pairs

    n = 50_000 if version == "new" else 10
    src, tgt = folder / f"{version}.src", folder / f"{version}.tgt"
    src.write_text("".join(f"quelle {i}\n" for i in range(n)))
    tgt.write_text("".join(f"source {i}\n" for i in range(n)))
    split = SplitConfig(src=str(src), tgt=str(tgt))
    load_pairs(split, DataConfig(train=split), "train", folder / "cache")
    return folder / "cache"


def _ding(folder: Path, version: str) -> Path:
    from mtkit.data.ding import build_ding
    from tests.test_ding import ding_text

    source = folder / f"de-en.{version}"
    text = ding_text() if version == "old" else ding_text().replace("Nummer", "Zahl")
    source.write_text(text, encoding="utf-8")
    build_ding(folder / "corpus", source=source, overwrite=True)
    return folder / "corpus"


def _translation(folder: Path, version: str) -> Path:
    import torch

    from mtkit.config import DecodeConfig, ModelConfig
    from mtkit.decoding.translate import translate_file
    from mtkit.model.transformer import Transformer
    from tests.conftest import tokenizer_for_tests

    tok = tokenizer_for_tests()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=1),
                        tok.src_vocab_size, tok.tgt_vocab_size).eval()
    source = folder / f"{version}.txt"
    source.write_text("".join(f"Der Bär {i}.\n" for i in range(3 if version == "old" else 60)))
    translate_file(model, tok, DecodeConfig(beam_size=1, max_len_b=3), source, folder / "out.txt", chunk_lines=10)
    return folder / "out.txt"


def _ct2_export(folder: Path, version: str) -> Path:
    import torch

    from mtkit.config import load_config, to_dict
    from mtkit.decoding.ct2 import export
    from mtkit.model.checkpoint import save_checkpoint
    from mtkit.model.transformer import Transformer
    from tests.conftest import tokenizer_for_tests

    tok = tokenizer_for_tests()
    cfg = load_config(None, ["data.train.src=a", "data.train.tgt=b", "model.d_model=16", "model.heads=2",
                             "model.d_ff=32", "model.encoder_layers=1", "model.decoder_layers=1",
                             "decode.max_input_tokens=16"])
    torch.manual_seed(0 if version == "old" else 1)
    model = Transformer(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
    path = folder / f"{version}.pt"
    save_checkpoint(path, {"config": to_dict(cfg), "tokenizer": tok.to_bytes(), "model": model.state_dict()})
    export(path, folder / "ct2", force=True)
    return folder / "ct2"


def _manifest(folder: Path, version: str) -> Path:
    from mtkit.training import manifest

    manifest.write(folder, {"version": version, "files": list(range(20_000))})
    return folder / "manifest.json"


def _curves(folder: Path, version: str) -> Path:
    from mtkit.training.curves import draw_curves

    run = folder / "run"
    run.mkdir(exist_ok=True)
    steps = range(1, 30 if version == "old" else 90)
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"event": "train", "step": s, "time": 1000.0 + s, "loss": 9.0 / s, "lr": 1e-4 * s}) + "\n"
        for s in steps))
    return draw_curves([run], folder / "curves.png")


def _metrics_rewrite(folder: Path, version: str) -> Path:
    from mtkit.training.runlog import drop_metrics_after

    path = folder / "metrics.jsonl"
    if version == "old":
        path.write_text("".join(json.dumps({"event": "train", "step": s, "pad": "x" * 100}) + "\n"
                                for s in range(1, 20_001)))
    else:
        drop_metrics_after(path, 10_000)  # a resume at update 10,000 drops the replayed ones
    return path
