"""Whether CTranslate2's int8 decodes faster than mtkit's own search here: timed once per machine.

`mtkit info` times it, and `mtkit translate` says so at start-up where CTranslate2 is installed
and its int8 is at least HINT_SPEEDUP x as fast as mtkit's fastest native path (decode.precision
auto: fp32, bf16 or int8, whichever precision.py picks here), with the commands to use it.

The timing: a random model of the default size (model section defaults, 8k vocabulary), the same
32 random 16-piece sentences, beam 5, outputs of 16 pieces, both engines with decode.workers auto,
the best of 3 passes after an untimed one; a few seconds. Repeated timings on one 2-core machine
spread by +-20%, so the figure is an estimate; the decision it feeds (suggest CTranslate2 or not)
has a margin. A trained model's outputs end at different lengths,
so this is the ratio of the engines' step costs, not a promise for every model; bench/decode_speed.py
measures a real one. The answer is kept in the user's cache directory (CACHE_FILE), per CPU,
threads and versions (mtkit's own, and NATIVE_REVISION), so translate times it only the first time.

mtkit does not switch engines by itself: CTranslate2's search differs from mtkit's (length
normalisation, forced EOS at the limit, n-best stopping: ct2.py), so the same model and settings
would give other translations than the ones validation chose best.pt by.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mtkit import __version__, extras, files
from mtkit.config import Config, DecodeConfig
from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from mtkit.decoding.ct2 import CT2Engine, model_spec
from mtkit.decoding.precision import prepare_for_decoding, resolve_decode_precision
from mtkit.decoding.search import search
from mtkit.decoding.workers import map_batches, resolve_workers, threads_per_worker
from mtkit.errors import MtkitError
from mtkit.hardware import best_time, machine_report
from mtkit.model.transformer import Transformer

log = logging.getLogger("mtkit")

HINT_SPEEDUP = 1.1  # CTranslate2 int8 must be this much faster before translate suggests it
VOCAB, SENTENCES, LENGTH, BEAM, BATCH = 8000, 32, 16, 5, 16  # the timed workload (see the module docstring)
CACHE_FILE = "engine-speed.json"
# Part of the cache key: raise it when mtkit's native decoding gets faster or slower, so that
# machines time the engines again instead of showing a ratio measured against older code
# (2: 2026-12-03, the slot-first decoder cache; beam 5 ~1.1x what it was on a Zen 2;
# 3: the int8 matmul without torch's override lookup, 1.06-1.09x at one thread;
# 4: self-attention over 7+ cached positions as matmuls, a cheaper beam top-k and op call).
NATIVE_REVISION = 4


def ct2_int8_speedup() -> float | None:
    """How many times as fast as mtkit's native decoding CTranslate2 int8 runs here (timed once per
    machine, then read from the cache); None where ctranslate2 is not installed or cannot run."""
    try:
        ct2 = extras.ctranslate2()
    except MtkitError:
        return None
    key = _machine_key(ct2.__version__)
    cache = _cache_path()
    known = _read_cache(cache)
    if key not in known:
        try:
            known[key] = time_engines()
        except (RuntimeError, ValueError, OSError) as e:  # a hint must never stop a translation
            log.debug("could not time CTranslate2 against mtkit here: %s", e)
            return None
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            files.write_text(cache, json.dumps(known, indent=1) + "\n")
        except OSError as e:  # a read-only home: time it again next time
            log.debug("could not cache the engine timing in %s: %s", cache, e)
    return known[key]


def hint(model_path: str | Path, speedup: float | None) -> str | None:
    """The start-up line for `mtkit translate` where CTranslate2 int8 is clearly faster, else None."""
    if speedup is None or speedup < HINT_SPEEDUP:
        return None
    out = f"{Path(model_path).stem}-ct2"
    return (f"CTranslate2 int8 decodes about {speedup:.1f}x as fast as mtkit here (timed on a default-size"
            f" model): mtkit export {model_path} -o {out} --quantization int8 && mtkit translate {out}"
            " --engine ctranslate2 (its search differs a little: docs/decoding.md)")


def time_engines() -> float:
    """Seconds of mtkit's native decoding / seconds of CTranslate2 int8's, on the workload above."""
    with torch.random.fork_rng(devices=[]):  # a random model without touching anyone's random stream
        torch.manual_seed(0)
        cfg = Config()
        model = Transformer(cfg.model, VOCAB, VOCAB).eval()
        sources = torch.randint(EOS_ID + 1, VOCAB, (SENTENCES, LENGTH)).tolist()  # no special pieces
    pieces = _Pieces(VOCAB)
    decode = replace(DecodeConfig(), beam_size=BEAM, max_len_a=0.0, max_len_b=LENGTH)
    batches = [sources[i: i + BATCH] for i in range(0, SENTENCES, BATCH)]
    workers = resolve_workers(None, "cpu")
    with tempfile.TemporaryDirectory(prefix="mtkit-engines-") as tmp:
        spec = model_spec(model, cfg, pieces)
        spec.validate()
        spec.optimize(quantization="int8")
        spec.save(tmp)
        engine = CT2Engine(tmp, pieces, "cpu", "int8", threads_per_worker(workers), workers)
        ct2_seconds = _best_time(lambda batch: engine.search_ids(batch, decode), batches, workers)
    native = prepare_for_decoding(model, resolve_decode_precision("auto", "cpu")[0])
    eos = torch.tensor([[EOS_ID]] * BATCH)
    with torch.inference_mode():
        native_seconds = _best_time(lambda batch: search(native, torch.cat([torch.tensor(batch), eos[: len(batch)]], 1),
                                                           decode), batches, workers)
    return round(native_seconds / ct2_seconds, 2)


def _best_time(run: Any, batches: list, workers: int) -> float:
    list(map_batches(run, batches[:1], 1))  # warm-up on one batch: kernels are picked on first use
    return best_time([lambda: list(map_batches(run, batches, workers))], warm_up=False)


class _Pieces:
    """A stand-in tokenizer for the timing: piece names only (what CTranslate2's vocabulary needs)."""

    def __init__(self, size: int):
        self._pieces = [f"p{i}" for i in range(size)]
        for i, name in ((PAD_ID, "<pad>"), (UNK_ID, "<unk>"), (BOS_ID, "<s>"), (EOS_ID, "</s>")):
            self._pieces[i] = name

    def pieces(self, side: str) -> list[str]:
        return self._pieces


def _machine_key(ct2_version: str) -> str:
    report = machine_report()
    return (f"{report['cpu']} ({report['cpu_capability']}, {report['cores']} cores), {torch.get_num_threads()}"
            f" threads, torch {torch.__version__}, ctranslate2 {ct2_version}, mtkit {__version__}"
            f" (native decoding revision {NATIVE_REVISION})")


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mtkit" / CACHE_FILE


def _read_cache(path: Path) -> dict[str, float]:
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: time it again
        return {}
    return {k: v for k, v in known.items() if isinstance(v, (int, float))} if isinstance(known, dict) else {}
