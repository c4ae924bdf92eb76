"""`mtkit average`, `mtkit export` and `mtkit import`: the commands that write model files.

Like cli.py, it imports the package's stages inside functions, on purpose: `mtkit --help` must
answer without loading torch (cli.py's docstring says why). cli.py registers these commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mtkit.cli_base import SetOpt, can_write, handles_errors, log
from mtkit.errors import ConfigError


@handles_errors
def average_cmd(
    checkpoints: List[Path] = typer.Argument(..., help="Checkpoints, or one run dir with --last N."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the averaged checkpoint."),
    last: Optional[int] = typer.Option(None, "--last", help="With a run dir: average its newest N step-*.pt."),
):
    """Average the weights of several checkpoints of one model (e.g. the last N saves)."""
    from mtkit.model.checkpoint import save_checkpoint
    from mtkit.tools.average import average_checkpoints, checkpoints_to_average

    can_write(output)
    paths = checkpoints_to_average(list(checkpoints), last)
    if output.exists():
        log.warning("overwriting %s", output)
    save_checkpoint(output, average_checkpoints(paths))
    typer.echo(f"averaged {len(paths)} checkpoints -> {output}", err=True)


@handles_errors
def export_cmd(
    model: str = typer.Argument(..., help="Checkpoint file, or a run dir (its best.pt)."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory to write (must not exist or be empty)."),
    format: str = typer.Option("ctranslate2", "--format", help="ctranslate2, or huggingface (post-norm models)."),
    quantization: str = typer.Option("float32", "--quantization",
                                     help="Weights as float32, int8, int8_float32, float16 or bfloat16."),
    force: bool = typer.Option(False, "--force", help="Replace an existing non-empty output directory."),
    set_: Optional[List[str]] = SetOpt,
):
    """Export a trained model for CTranslate2 (translate it with `mtkit translate DIR --engine ctranslate2`)
    or for Hugging Face transformers (AutoModelForSeq2SeqLM.from_pretrained(DIR))."""
    if format not in ("ctranslate2", "huggingface"):
        raise ConfigError(f"--format: ctranslate2 or huggingface (got {format!r})")
    can_write(output, kind="export")
    if format == "huggingface":
        from mtkit.model.marian_export import export_huggingface

        if quantization != "float32" or set_:
            raise ConfigError("--format huggingface writes float32 weights and the model's own settings;"
                              " drop --quantization and --set")
        export_huggingface(model, output, force)
        typer.echo(f"exported {model} -> {output} (Hugging Face transformers, Marian)", err=True)
        return
    from mtkit.decoding.ct2 import export

    export(model, output, quantization, force, set_ or [])
    typer.echo(f"exported {model} -> {output} (CTranslate2, {quantization})", err=True)


@handles_errors
def import_cmd(
    directory: Path = typer.Argument(..., help="A Hugging Face Marian model directory (OPUS-MT; save_pretrained)."),
    output: Path = typer.Option(..., "-o", "--output", help="The mtkit checkpoint to write (.pt)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing checkpoint."),
):
    """Import a Marian / OPUS-MT model to translate, evaluate, export or fine-tune (--init-from) in mtkit."""
    from mtkit.model.checkpoint import save_checkpoint
    from mtkit.model.marian import import_marian

    can_write(output)
    if output.exists() and not force:
        raise ConfigError(f"-o {output}: exists; give another path, or --force to replace it")
    save_checkpoint(output, import_marian(directory))
    typer.echo(f"imported {directory} -> {output}", err=True)
