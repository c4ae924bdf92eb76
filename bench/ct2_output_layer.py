#!/usr/bin/env python3
"""CTranslate2's matmuls against torch's on one shape: a decoding step's output projection.

Whether CTranslate2 decodes faster because of its int8 matmul or because of what runs around it
cannot be read from a whole-search profile (its JIT kernels carry no names). So this builds two
one-layer CTranslate2 decoders that differ only in vocabulary size (V_SMALL and V_LARGE pieces;
d_model 256, 4 heads, FFN 1024, random weights), times greedy steps of ROWS rows through each, and
takes the difference per step: the output projection over the extra V_LARGE - V_SMALL pieces, plus
CTranslate2's softmax and top-1 over them. Beside it, torch's fp32 Linear and mtkit's fbgemm int8
Linear (model/quantize.py, activation quantization included) on the same (ROWS, 256, extra) shape,
without any softmax. Timing under emulation (bench/as_cpu.sh) means nothing.

usage: python bench/ct2_output_layer.py [--threads 1] [--out /tmp/ct2-output-layer]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

D, HEADS, D_FF = 256, 4, 1024
ROWS, V_SMALL, V_LARGE = 160, 512, 8000
SHORT, LONG = 10, 60  # steps per generation; the difference gives the time per step


def build(out: Path, vocab: int) -> Path:
    """A one-layer pre-norm CTranslate2 decoder with random weights, saved in int8 (once)."""
    import numpy as np
    from ctranslate2.specs import TransformerDecoderModelSpec

    path = out / f"decoder-{vocab}"
    if (path / "model.bin").exists():
        return path
    rng = np.random.default_rng(0)

    def weights(*shape: int):
        return (rng.standard_normal(shape) / 16).astype(np.float32)

    def norm(ln) -> None:
        ln.gamma, ln.beta = np.ones(D, np.float32), np.zeros(D, np.float32)

    spec = TransformerDecoderModelSpec.from_config(num_layers=1, num_heads=HEADS, pre_norm=True)
    dec, layer = spec.decoder, spec.decoder.layer[0]
    dec.embeddings.weight, dec.scale_embeddings = weights(vocab, D), True
    dec.projection.weight, dec.projection.bias = weights(vocab, D), np.zeros(vocab, np.float32)
    norm(dec.layer_norm)
    norm(layer.self_attention.layer_norm)
    norm(layer.ffn.layer_norm)
    for linear, (n, k) in [(layer.self_attention.linear[0], (3 * D, D)), (layer.self_attention.linear[1], (D, D)),
                           (layer.ffn.linear_0, (D_FF, D)), (layer.ffn.linear_1, (D, D_FF))]:
        linear.weight, linear.bias = weights(n, k), np.zeros(n, np.float32)
    spec.register_vocabulary([f"t{i}" for i in range(vocab)])
    spec.validate()
    spec.optimize(quantization="int8")
    path.mkdir(parents=True, exist_ok=True)
    spec.save(str(path))
    return path


def ms_per_step(path: Path, compute_type: str, threads: int) -> float:
    """Milliseconds per greedy step of ROWS rows: (LONG - SHORT steps) / (LONG - SHORT), best of 3."""
    import ctranslate2

    from mtkit.hardware import best_time

    gen = ctranslate2.Generator(str(path), compute_type=compute_type, intra_threads=threads, inter_threads=1)
    prompts = [["t5"]] * ROWS

    def seconds(steps: int) -> float:  # best of 3, after one untimed run
        return best_time([lambda: gen.generate_batch(prompts, max_length=steps, min_length=steps, sampling_topk=1,
                                                     include_prompt_in_result=False)])

    return 1000 * (seconds(LONG) - seconds(SHORT)) / (LONG - SHORT)


def torch_ms(threads: int) -> dict[str, float]:
    """ms per call of torch's fp32 Linear and mtkit's fbgemm int8 Linear on (ROWS, D) -> V_LARGE - V_SMALL."""
    import torch
    from torch import nn

    from mtkit.hardware import best_time
    from mtkit.model.quantize import make_int8_linear

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(D, V_LARGE - V_SMALL)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(V_LARGE - V_SMALL, D, generator=gen) / 16)
    x = torch.randn(ROWS, D, generator=gen)
    out = {}
    with torch.inference_mode():
        for name, layer in [("torch fp32", linear), ("mtkit fbgemm int8", make_int8_linear(linear, "fbgemm"))]:
            out[name] = 1000 * best_time([lambda layer=layer: layer(x)] * 20, tries=5) / 20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/ct2-output-layer"))
    args = ap.parse_args()

    import ctranslate2

    extra = V_LARGE - V_SMALL
    print(f"output projection ({ROWS}, {D}) -> {extra}; {args.threads} thread(s); CTranslate2 {ctranslate2.__version__}:"
          f" per-step difference between {V_LARGE}- and {V_SMALL}-piece one-layer decoders")
    small, large = build(args.out, V_SMALL), build(args.out, V_LARGE)
    rows = {}
    for compute_type in ("float32", "int8"):
        rows[f"CTranslate2 {compute_type} (+ softmax, top-1)"] = (
            ms_per_step(large, compute_type, args.threads) - ms_per_step(small, compute_type, args.threads))
    rows.update(torch_ms(args.threads))
    macs = ROWS * D * extra
    for name, ms in rows.items():
        print(f"{name:<38} {ms:7.2f} ms  {macs / ms / 1e6:6.1f} GMAC/s")
    print(json.dumps({"shape": [ROWS, D, extra], "threads": args.threads, "ms": {k: round(v, 3) for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
