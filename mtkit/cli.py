"""The `mtkit` command: a thin Typer layer over the package.

Each command parses its options, calls one function of the package and prints the result. An
MtkitError becomes one `error: ...` line on stderr and its exit code, no traceback (`--debug` or
MTKIT_DEBUG=1 shows it): cli_base.py, with the options several commands share. `mtkit data ...`
is in cli_data.py; the commands that write model files (average, export, import) in cli_models.py.

These are the modules of the package that import inside functions, on purpose: each command
imports the stage it runs when it runs, so `mtkit --help`, `--version` and a config error answer
at once instead of after loading torch, datasets and sacrebleu (seconds), and a command never
loads the stages it does not use.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from mtkit import __version__
from mtkit.cli_base import (
    STATE,
    EngineOpt,
    PrefixOpt,
    SetOpt,
    WeightsOpt,
    can_write,
    debug_on,
    handles_errors,
    with_prefix,
)
from mtkit.cli_data import data_app
from mtkit.cli_models import average_cmd, export_cmd, import_cmd
from mtkit.errors import ConfigError

log = logging.getLogger("mtkit")

app = typer.Typer(
    help="mtkit: train Transformer translation models, translate files, score them with sacreBLEU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data_app, name="data")
inspect_app = typer.Typer(help="Look inside a model: attention heat maps, the position table.", no_args_is_help=True)
app.add_typer(inspect_app, name="inspect")


def version_callback(value: bool):
    if value:
        typer.echo(f"mtkit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                 help="Print the version and exit."),
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More log detail (debug)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only warnings and errors."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also MTKIT_DEBUG=1)."),
):
    """mtkit: train Transformer translation models, translate files, score them with sacreBLEU."""
    STATE["debug"] = debug
    STATE["verbosity"] = -1 if quiet else min(verbose, 1)


# ----------------------------------------------------------------------------- tokenizer, train


@app.command("tokenizer")
@handles_errors
def tokenizer_cmd(
    config: Path = typer.Argument(..., help="YAML config."),
    set_: Optional[List[str]] = SetOpt,
    retrain: bool = typer.Option(False, "--retrain", help="Train again even if the run dir has one."),
):
    """Train the SentencePiece tokenizer into RUN_DIR/tokenizer (train does this when missing)."""
    from mtkit.config import load_config
    from mtkit.data.run_tokenizer import get_tokenizer
    from mtkit.data.sources import check_data_files

    cfg = load_config(config, set_ or [])
    run_dir = Path(cfg.run_dir)
    check_data_files(cfg.data)
    can_write(run_dir, "run_dir", kind="folder")
    tok = get_tokenizer(cfg, run_dir, retrain=retrain)
    typer.echo(f"tokenizer: {run_dir / 'tokenizer'} (vocab {tok.src_vocab_size}"
               f"{'' if tok.joint else f'/{tok.tgt_vocab_size}'}, {'joint' if tok.joint else 'separate'})", err=True)


@app.command("train")
@handles_errors
def train_cmd(
    config: Path = typer.Argument(..., help="YAML config."),
    set_: Optional[List[str]] = SetOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard the run dir's checkpoints and start afresh."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this checkpoint's weights."),
    devices: int = typer.Option(1, "--devices", min=1, help="Processes on this machine, one per GPU (or CPU"
                                " share): launches torchrun's engine. Many machines: see docs/training.md."),
):
    """Train a Transformer; running it again on the same run dir resumes exactly."""
    from mtkit.config import load_config
    from mtkit.training.interrupt import Interrupted
    from mtkit.training.train import train

    cfg = load_config(config, set_ or [])
    if devices > 1:
        from mtkit.training.distributed import launch

        verbosity = {-1: ["-q"], 1: ["-v"]}.get(STATE.get("verbosity", 0), [])
        args = [*(["--debug"] if debug_on() else []), *verbosity, "train", str(config), *(f"--set={s}" for s in set_ or []),
                *(["--overwrite"] if overwrite else []), *(["--init-from", str(init_from)] if init_from else [])]
        raise typer.Exit(launch(devices, args))
    try:
        train(cfg, overwrite=overwrite, init_from=str(init_from) if init_from else None)
    except Interrupted as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 says it once
            typer.echo(str(e), err=True)
        raise typer.Exit(e.exit_code) from None


# ----------------------------------------------------------------------------- translate, evaluate


@app.command("translate")
@handles_errors
def translate_cmd(
    model: List[str] = typer.Argument(..., help="Checkpoint file, or a run dir (its best.pt); several: an ensemble."),
    input: Optional[Path] = typer.Option(None, "-i", "--input", help="Input file (default stdin)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (default stdout)."),
    beam: Optional[int] = typer.Option(None, "--beam", help="Beam size (default: the checkpoint's decode.beam_size)."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy search (beam 1)."),
    nbest: Optional[int] = typer.Option(None, "--nbest", help="Output N hypotheses per line as `index ||| hyp ||| score`."),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="Source tokens x beam size per batch."),
    sample: bool = typer.Option(False, "--sample", help="Draw translations instead of searching (--nbest N: N samples)."),
    topk: Optional[int] = typer.Option(None, "--topk", help="With --sample: among the K most probable pieces (0: all)."),
    topp: Optional[float] = typer.Option(None, "--topp", help="With --sample: within the nucleus of probability P."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="With --sample: soften (>1) or sharpen."),
    seed: Optional[int] = typer.Option(None, "--seed", help="With --sample: a line's samples follow from it and its text."),
    prefix: Optional[str] = PrefixOpt,
    weights: Optional[str] = WeightsOpt,
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    engine: str = EngineOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Translate a file or stdin: exactly one output line per input line, in order."""
    from mtkit.decoding.ensemble import parse_weights
    from mtkit.decoding.loading import load_for_decoding
    from mtkit.decoding.translate import translate_file

    can_write(output)
    sampling = {"sample": sample or None, "topk": topk, "topp": topp, "temperature": temperature, "seed": seed}
    sets = [*with_prefix(set_, prefix), *(f"decode.{k}={str(v).lower() if k == 'sample' else v}" for k, v in sampling.items()
                             if v is not None)]
    net, tok, decode, dev = load_for_decoding(model, device, sets, beam, greedy, nbest, batch_tokens, engine,
                                              parse_weights(weights))
    if not decode.sample and any(v is not None for v in (topk, topp, temperature, seed)):
        raise ConfigError("--topk, --topp, --temperature and --seed shape sampling; add --sample")
    if output is not None and output.exists():
        log.warning("overwriting %s when the translation is complete", output)
    translate_file(net, tok, decode, input, output, device=dev)


@app.command("score")
@handles_errors
def score_cmd(
    model: str = typer.Argument(..., help="Checkpoint or run dir (or an export, with --engine ctranslate2)."),
    src: Path = typer.Option(..., "--src", help="Source sentences, one per line."),
    tgt: Path = typer.Option(..., "--tgt", help="Their translations, line-aligned with --src."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (default stdout)."),
    normalize: bool = typer.Option(False, "--normalize", help="Log-probability per target piece, not summed."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line: score, pieces, log_probs."),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="Padded tokens per batch."),
    prefix: Optional[str] = PrefixOpt,
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    engine: str = EngineOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Score given translations: each pair's log-probability under MODEL (forced decoding), for
    filtering corpora and reranking. One line per pair, in order; EOS counts as a piece."""
    from mtkit.decoding.forced import score_file
    from mtkit.decoding.loading import load_for_decoding

    can_write(output)
    net, tok, decode, dev = load_for_decoding(model, device, with_prefix(set_, prefix), batch_tokens=batch_tokens,
                                              engine=engine)
    pairs = score_file(net, tok, decode, src, tgt, output, normalize=normalize, as_json=as_json, device=dev)
    if output is not None:
        typer.echo(f"scored {pairs} pairs -> {output}", err=True)


@app.command("evaluate")
@handles_errors
def evaluate_cmd(
    model: Optional[List[str]] = typer.Argument(None, help="Checkpoint or run dir (several: an ensemble); omit with --hyp."),
    src: Optional[Path] = typer.Option(None, "--src", help="Source file to translate."),
    ref: Optional[Path] = typer.Option(None, "--ref", help="Reference file, one line per source line."),
    hyp: Optional[Path] = typer.Option(None, "--hyp", help="Score this hypothesis file instead of translating."),
    valid: bool = typer.Option(False, "--valid", help="Score MODEL on its run's dev set as validation did."),
    beam: Optional[int] = typer.Option(None, "--beam", help="Beam size."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy search (as training's validation)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the translations here."),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="Source tokens x beam size per batch."),
    tgt_lang: Optional[str] = typer.Option(None, "--tgt-lang", help="Target language (BLEU's tokenizer); default: MODEL's."),
    tokenize: Optional[str] = typer.Option(None, "--tokenize", help="sacreBLEU tokenizer for BLEU (13a, zh, char, ...)."),
    chrf_word_order: Optional[int] = typer.Option(None, "--chrf-word-order", help="chrF word n-grams; 2 = chrF++."),
    prefix: Optional[str] = PrefixOpt,
    weights: Optional[str] = WeightsOpt,
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    engine: str = EngineOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Score translations with sacreBLEU: BLEU (tokenized for the target language), chrF, TER."""
    from mtkit.decoding.ensemble import parse_weights
    from mtkit.decoding.evaluate import evaluate
    from mtkit.decoding.scoring import format_scores

    can_write(output)
    result = evaluate(model or None, src, ref, hyp, valid, device=device, overrides=with_prefix(set_, prefix), beam=beam,
                      greedy=greedy, batch_tokens=batch_tokens, engine=engine, output=output, tgt_lang=tgt_lang,
                      tokenize=tokenize, chrf_word_order=chrf_word_order, weights=parse_weights(weights))
    if as_json:
        typer.echo(json.dumps({"bleu": result["bleu"], "chrf": result["chrf"], "ter": result["ter"],
                               "signature": result["signature"], "label": result["label"], "n": result["n"],
                               **({"decode": result["decode"]} if "decode" in result else {})}))
    else:
        typer.echo(format_scores(result))


app.command("average")(average_cmd)
app.command("export")(export_cmd)
app.command("import")(import_cmd)


# ----------------------------------------------------------------------------- pictures


@inspect_app.command("attention")
@handles_errors
def inspect_attention_cmd(
    model: str = typer.Argument(..., help="Checkpoint file, or a run dir (its best.pt)."),
    src: str = typer.Option(..., "--src", help="The source sentence."),
    tgt: Optional[str] = typer.Option(None, "--tgt", help="Force this translation (default: the model's greedy one)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Picture to write (.png, .svg, .pdf)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Only this layer (from 1)."),
    head: Optional[int] = typer.Option(None, "--head", help="Only this head (from 1)."),
    as_json: bool = typer.Option(False, "--json", help="Write the weights as JSON instead (to -o or stdout)."),
):
    """Attention heat maps of one sentence pair: encoder self, decoder self, encoder-decoder."""
    from mtkit import files
    from mtkit.model.loading import load_model
    from mtkit.tools.inspection import attention_maps

    if output is None and not as_json:
        raise ConfigError("give -o PICTURE (e.g. -o attn.png), or --json to print the weights")
    can_write(output)
    net, tok, cfg = load_model(model, "cpu")
    maps = attention_maps(net, tok, src, tgt, cfg.decode.max_len_a, cfg.decode.max_len_b)
    if as_json:
        text = json.dumps(maps.to_json())
        if output is None:
            typer.echo(text)
            return
        files.write_text(output, text + "\n")
    else:
        from mtkit.tools.plots import draw_attention

        draw_attention(maps, output, layer, head)
    typer.echo(f"attention of {' '.join(maps.src_pieces)} -> {' '.join(maps.tgt_pieces)} written to {output}", err=True)


@inspect_app.command("positions")
@handles_errors
def inspect_positions_cmd(
    d_model: int = typer.Option(128, "--d-model", help="Width of the table."),
    length: int = typer.Option(100, "--length", help="Positions to show."),
    output: Path = typer.Option(..., "-o", "--output", help="Picture to write."),
):
    """The sinusoidal position encodings (section 3.5) as a heat map and a few curves."""
    from mtkit.tools.inspection import position_table
    from mtkit.tools.plots import draw_positions

    if d_model < 2 or length < 1:
        raise ConfigError(f"--d-model must be >= 2 and --length >= 1 (got {d_model}, {length})")
    can_write(output)
    draw_positions(position_table(d_model, length), output)
    typer.echo(f"position table {length} x {d_model} written to {output}", err=True)


@app.command("plot")
@handles_errors
def plot_cmd(
    run_dirs: List[Path] = typer.Argument(..., help="One or more run dirs (their metrics.jsonl)."),
    output: Path = typer.Option(..., "-o", "--output", help="Picture to write."),
):
    """Training curves (train loss, dev ppl, dev BLEU, learning rate) of one or more runs."""
    from mtkit.training.curves import draw_curves

    can_write(output)
    draw_curves(list(run_dirs), output)
    typer.echo(f"curves of {len(run_dirs)} run(s) written to {output}", err=True)


@app.command("info")
@handles_errors
def info_cmd(
    model: Optional[str] = typer.Argument(None, help="A checkpoint or run dir: print its run manifest instead."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Versions, CPU, native bf16, threads and GPUs (what `precision: auto` picks here, for bug
    reports); with MODEL, what that model was trained from and on (its run manifest)."""
    if model is not None:
        from mtkit.training.manifest import format_manifest, manifest_of

        manifest = manifest_of(model)
        typer.echo(json.dumps(manifest) if as_json else format_manifest(manifest))
        return
    from mtkit.tools.info import format_report, info_report

    report = info_report()
    typer.echo(json.dumps(report) if as_json else format_report(report))


def main() -> None:
    """Entry point of the `mtkit` console script."""
    if "--debug" in sys.argv[1:]:
        STATE["debug"] = True
    if "WORLD_SIZE" in os.environ:  # one of torchrun's processes (or --devices N's): see run_then_exit
        from mtkit.training.distributed import run_then_exit

        run_then_exit(app)
    app()


if __name__ == "__main__":
    main()
