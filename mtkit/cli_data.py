"""`mtkit data ...`: get a corpus (Ding, synthetic) and report on a config's data before training.

Like cli.py, it imports the package's stages inside functions, on purpose: `mtkit --help` must
answer without loading torch (cli.py's docstring says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mtkit.cli_base import SetOpt, can_write, handles_errors, log
from mtkit.errors import ConfigError

data_app = typer.Typer(help="Get and inspect corpora.", no_args_is_help=True)


@data_app.command("ding")
@handles_errors
def data_ding(
    out: Path = typer.Option(Path("data/ding-de-en"), "--out", help="Folder for train/dev/test .de/.en."),
    source: Optional[Path] = typer.Option(None, "--source", help="The Ding dictionary file or trans-de-en .deb."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different corpus already in --out."),
):
    """Build the Ding German-English corpus from Debian's trans-de-en package."""
    from mtkit.data.ding import build_ding

    can_write(out, "--out", kind="folder")
    counts = build_ding(out, source=source, overwrite=overwrite)
    typer.echo("  ".join(f"{k} {v}" for k, v in counts.items()) + f"  -> {out}", err=True)


@data_app.command("synthetic")
@handles_errors
def data_synthetic(
    out: Path = typer.Option(Path("data/tiny-reverse"), "--out", help="Folder for train/dev/test .src/.tgt."),
    task: str = typer.Option("reverse", "--task", help="copy or reverse."),
    train: int = typer.Option(20_000, "--train", help="Training pairs."),
    seed: int = typer.Option(1, "--seed", help="Random seed."),
):
    """Write a synthetic copy/reverse corpus (for configs/tiny-reverse.yaml and smoke tests)."""
    from mtkit.data.synthetic import write_task

    if task not in ("copy", "reverse"):
        raise ConfigError(f"--task: expected copy or reverse (got {task!r})")
    can_write(out, "--out", kind="folder")
    counts = write_task(out, task=task, train=train, seed=seed)
    typer.echo("  ".join(f"{k} {v}" for k, v in counts.items()) + f"  -> {out}", err=True)


@data_app.command("check")
@handles_errors
def data_check(config: Path = typer.Argument(..., help="YAML config."), set_: Optional[List[str]] = SetOpt):
    """Report on a config's data: pairs, drops by reason, lengths, tokenizer coverage."""
    from mtkit.config import load_config
    from mtkit.data.check import check_report
    from mtkit.data.tokenizer import Tokenizer

    cfg = load_config(config, set_ or [])
    tok_dir = Path(cfg.run_dir) / "tokenizer"
    tok = Tokenizer.load(tok_dir) if tok_dir.exists() else None
    if tok is None:
        log.info("no tokenizer in %s yet: lengths in words (run `mtkit tokenizer %s` for pieces)", tok_dir, config)
    typer.echo(check_report(cfg, tok))
