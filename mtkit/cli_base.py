"""What every `mtkit` command shares: one `error: ...` line instead of a traceback (`handles_errors`),
the --debug switch, and the options several commands take (--set, --engine).

Like cli.py, it imports the package's stages inside functions, on purpose: `mtkit --help` must
answer without loading torch (cli.py's docstring says why).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import typer

from mtkit.errors import MtkitError

log = logging.getLogger("mtkit")

STATE = {"debug": False}

SetOpt = typer.Option(None, "--set", metavar="KEY.PATH=VALUE", help="Override a config key (repeatable).")
WeightsOpt = typer.Option(None, "--weights", help="With several models: their weights, e.g. 0.6,0.4 (default: equal).")
PrefixOpt = typer.Option(None, "--prefix", help="A tag the model was trained with, put before every source"
                         " line, e.g. \"<2de>\" (decode.prefix).")
EngineOpt = typer.Option("torch", "--engine", help="torch (mtkit's search) or ctranslate2 (an `mtkit export`"
                         " directory, or a checkpoint exported on the fly).")


def with_prefix(sets: list[str] | None, prefix: str | None) -> list[str]:
    """--set items with --prefix added as decode.prefix (JSON-quoted: any text stays a string)."""
    return [*(sets or []), *([f"decode.prefix={json.dumps(prefix)}"] if prefix is not None else [])]


def can_write(path: Path | None, what: str = "-o", kind: str = "file") -> None:
    """Before any work: the output `path` can be written (files.py). kind "file": a file goes there;
    "folder": a folder mtkit writes into (made now); "export": a folder put there whole later."""
    from mtkit import files

    if path is None:
        return
    if kind == "file":
        files.writable_file(path, what)
    elif kind == "folder":
        files.writable_dir(path, what)
    else:
        files.writable_dir(Path(path).absolute().parent, what, for_path=path)


def os_error_line(e: OSError) -> str:
    """An OSError as one line: the file, what the system said, and a missing folder named."""
    if e.filename is None:
        return f"{e.strerror or e}"
    where = Path(e.filename)
    hint = ""
    if not where.parent.exists():
        hint = f"; its folder {where.parent} does not exist"
    return f"{where}: {e.strerror or e}{hint}"


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what the shell reports for a tool that a closed pipe ended


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not hit the closed pipe again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (a test's captured output)
        pass


def debug_on() -> bool:
    return STATE["debug"] or os.environ.get("MTKIT_DEBUG", "") not in ("", "0")


def handles_errors(fn):
    """Turn MtkitError into `error: ...` on stderr and a non-zero exit code, without traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mtkit.training.runlog import setup_logging

        setup_logging(STATE.get("verbosity", 0))
        try:
            return fn(*args, **kwargs)
        except MtkitError as e:
            if debug_on():
                raise
            rank = os.environ.get("RANK", "0")  # under torchrun every process may report the same problem
            typer.echo(f"error: {e}" if rank == "0" else f"error: [rank {rank}] {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except BrokenPipeError:  # the reader stopped reading (`mtkit translate ... | head`): not an error
            if debug_on():
                raise
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as e:  # the system refused a read or write that no check foresaw (disk full, ...)
            if debug_on():
                raise
            typer.echo(f"error: {os_error_line(e)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if debug_on():
                raise
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper
