"""GPU check: training and decoding speed of a transformer-base model, and the DDP start-up.

usage: PYTHONPATH=. python bench/gpu_check.py [--cpu-smoke] [--train-seconds 40]
       (bench/gpu_check.sh runs it from the source tree; it installs nothing and needs no network)

On one GPU (made for an NVIDIA H200, under 8 minutes) it prints:
  1. the measured dense matmul peak (bf16 and TF32, each sized and repeated for 2 s) next to the
     chip's data-sheet bf16 peak;
  2. training target tokens/s of transformer-base (d_model 512, 8 heads, d_ff 2048, 6+6 layers,
     joint vocab 32k, tied embeddings) in bf16 autocast and in fp32 (TF32 matmuls), on synthetic
     pairs of realistic lengths (median 24 tokens) in mtkit's own token batches; model FLOPs
     utilisation against the bf16 peak; peak GPU memory; the same with torch.compile;
  3. greedy and beam-5 decoding of 1,000 sentences at batch 64 and at the largest batch that fits
     (the weights are untrained, so outputs run to the length limit: tokens/s is the measure);
  4. whether `torchrun --nproc_per_node 1 -m mtkit train` starts and trains through the DDP path.
--cpu-smoke runs the same code on CPU with a tiny model in well under a minute (tested in make test).
bf16 is measured only where the device computes it natively; elsewhere it is reported as "emulated".
Prints a table per part and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peaks from NVIDIA's data sheets (FLOP/s, without sparsity).
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}

BASE = ["model.d_model=512", "model.heads=8", "model.d_ff=2048", "model.encoder_layers=6",
        "model.decoder_layers=6", "model.dropout=0.1", "model.tie_embeddings=true"]
SMOKE = ["model.d_model=64", "model.heads=4", "model.d_ff=128", "model.encoder_layers=2",
         "model.decoder_layers=2", "model.dropout=0.1", "model.tie_embeddings=true"]


def synthetic_pairs(n: int, vocab: int, seed: int = 0):
    """n (src, tgt) id lists with lengths like news text: log-normal, median 24, 3..128 tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    src_lens = np.clip(rng.lognormal(np.log(24), 0.5, n), 3, 128).astype(int)
    tgt_lens = np.clip(src_lens * rng.uniform(0.8, 1.25, n), 3, 128).astype(int)
    src = [rng.integers(4, vocab, k).tolist() for k in src_lens]
    tgt = [rng.integers(4, vocab, k).tolist() for k in tgt_lens]
    return src, tgt


def measure_training(cfg, src, tgt, vocab: int, device: str, precision: str, seconds: float,
                     compile_model: bool = False) -> dict:
    import torch

    from mtkit.data.batching import TokenBatchSampler
    from mtkit.data.padding import make_batch
    from mtkit.data.tokenizer import PAD_ID
    from mtkit.hardware import sync
    from mtkit.model.transformer import Transformer
    from mtkit.training.distributed import World
    from mtkit.training.step import make_learner

    torch.manual_seed(0)
    model = Transformer(cfg.model, vocab, vocab).to(device)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=compile_model))
    learner = make_learner(model, cfg, device, "bf16" if precision == "bf16" else "fp32", World())
    sampler = TokenBatchSampler([len(s) for s in src], [len(t) for t in tgt], cfg.train.batch_tokens, seed=0)
    batches = iter(sampler)
    pad_to = 8 if device.startswith("cuda") else 1
    flops = model.flops_per_target_token(
        int(sum(map(len, src)) / len(src)) + 1, int(sum(map(len, tgt)) / len(tgt)) + 1)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    done = tokens = 0
    t_start = None
    warmup = 5 if not compile_model else 15  # compiling sees a few shapes first
    deadline = time.perf_counter() + seconds * (3 if compile_model else 1.5)
    while True:
        idx = next(batches)[1]
        batch = make_batch([src[i] for i in idx], [tgt[i] for i in idx], pad_to=pad_to)
        n = int((batch["tgt_out"] != PAD_ID).sum())
        learner.step([batch], n)
        done += 1
        if done == warmup:
            sync(device)
            t_start = time.perf_counter()
        elif done > warmup:
            tokens += n
            if time.perf_counter() - t_start >= seconds or time.perf_counter() >= deadline:
                break
    sync(device)
    elapsed = time.perf_counter() - t_start
    tok_s = tokens / elapsed
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"precision": precision, "compile": compile_model, "steps": done - warmup, "tokens_per_s": round(tok_s),
            "tflops": float(f"{tok_s * flops / 1e12:.3g}"), "mflop_per_token": round(flops / 1e6, 1),
            "peak_mem_gib": round(peak_mem, 2) if peak_mem is not None else None}


def measure_decoding(model, src, device: str, beam: int, batch: int, precision: str) -> dict:
    import torch

    from mtkit.config import DecodeConfig
    from mtkit.data.padding import make_batch
    from mtkit.decoding.search import search
    from mtkit.hardware import sync

    decode = DecodeConfig(beam_size=beam, length_penalty=1.0, max_len_a=1.5, max_len_b=10)
    order = sorted(range(len(src)), key=lambda i: len(src[i]))  # similar lengths share a batch
    chunks = [[src[i] for i in order[k:k + batch]] for k in range(0, len(order), batch)]
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        search(model, make_batch(chunks[0][:8])["src"].to(device), decode)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        out_tokens = 0
        for chunk in chunks:
            hyps = search(model, make_batch(chunk)["src"].to(device), decode)
            out_tokens += sum(len(h[0].tokens) + 1 for h in hyps)
        sync(device)
    seconds = time.perf_counter() - t0
    return {"beam": beam, "batch": batch, "precision": precision, "seconds": round(seconds, 2),
            "sentences_per_s": round(len(src) / seconds, 1), "tokens_per_s": round(out_tokens / seconds),
            "tokens_per_sentence": round(out_tokens / len(src), 1)}


def ddp_start(device: str, smoke: bool) -> dict:
    """`torchrun --standalone --nproc_per_node 1 -m mtkit train` on a tiny copy task."""
    from mtkit.data.synthetic import write_task

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_task(data, task="copy", train=200, dev=10, test=10, seed=1)
        (Path(tmp) / "c.yaml").write_text("seed: 1\n")
        sets = [f"run_dir={tmp}/run", f"data.train.src={data}/train.src", f"data.train.tgt={data}/train.tgt",
                f"data.valid.src={data}/dev.src", f"data.valid.tgt={data}/dev.tgt", "data.src_lang=src",
                "data.tgt_lang=tgt", "tokenizer.vocab_size=48", "model.d_model=32", "model.heads=2",
                "model.d_ff=64", "model.encoder_layers=1", "model.decoder_layers=1", "train.max_steps=10",
                "train.eval_every=10", "train.warmup_steps=5", "train.batch_tokens=512", "data.num_proc=1",
                f"train.device={'cuda' if device.startswith('cuda') else 'cpu'}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "mtkit", "train", f"{tmp}/c.yaml", *(f"--set={s}" for s in sets)]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp)
        seconds = time.perf_counter() - t0
        log = r.stderr + r.stdout
        backend = "nccl" if "process group: nccl" in log else "gloo" if "process group: gloo" in log else None
        ok = r.returncode == 0 and backend is not None and (Path(tmp) / "run" / "last.pt").exists()
        if not ok:
            print(log[-3000:], file=sys.stderr)
        return {"ok": ok, "exit_code": r.returncode, "backend": backend, "seconds": round(seconds, 1)}


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [" | ".join(keys)] + [" | ".join(str(r.get(k)) for k in keys) for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU: checks the script runs")
    ap.add_argument("--train-seconds", type=float, default=None, help="timed seconds per training setting")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile training measurement")
    args = ap.parse_args()

    import torch

    from mtkit.config import load_config
    from mtkit.hardware import matmul_flops, native_bf16
    from mtkit.model.transformer import Transformer

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; run with --cpu-smoke to check the script on CPU", file=sys.stderr)
        return 2
    device = "cpu" if smoke else "cuda"
    vocab = 1000 if smoke else 32000
    shape = SMOKE if smoke else BASE
    batch_tokens = 1024 if smoke else 16384
    seconds = args.train_seconds or (2.0 if smoke else 40.0)
    n_train, n_decode = (400, 50) if smoke else (200_000, 1000)
    cfg = load_config(None, [*shape, f"train.batch_tokens={batch_tokens}", "train.lr=0.0005",
                             "data.train.src=unused.src", "data.train.tgt=unused.tgt"])  # data is synthetic
    if smoke:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    name = torch.cuda.get_device_name() if not smoke else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True  # "fp32" on GPU means TF32 tensor-core matmuls
    torch.backends.cudnn.allow_tf32 = True
    print(f"gpu_check: {name}; torch {torch.__version__}; model {'smoke' if smoke else 'transformer-base'}"
          f" ({' '.join(s.split('.', 1)[1] for s in shape)}, vocab {vocab}); batch_tokens {batch_tokens};"
          f" {seconds:.0f}s timed per training setting")
    result: dict = {"device": name, "torch": torch.__version__, "smoke": smoke, "batch_tokens": batch_tokens}

    # bf16 is measured only where the device computes it natively: emulated, it is many times slower
    # than fp32 and would spend minutes here (mtkit/hardware.py decides; MTKIT_NATIVE_BF16 overrides).
    bf16_native, bf16_why = native_bf16(device)
    precisions = ["bf16", "fp32"] if bf16_native else ["fp32"]
    result["native_bf16"] = bf16_native
    seconds_mm, max_n = (0.25, 512) if smoke else (2.0, 8192)  # time-bound: size and repeats fit the time
    peaks = {"tf32": matmul_flops(torch.float32, seconds_mm, max_n, device)}
    if bf16_native:
        peaks["bf16"] = matmul_flops(torch.bfloat16, seconds_mm, max_n, device)
    sheet = next((v for k, v in BF16_PEAK.items() if k in name), None)
    result["matmul_tflops"] = {k: float(f"{v / 1e12:.3g}") for k, (v, _) in peaks.items()}
    if not bf16_native:
        result["matmul_tflops"]["bf16"] = "emulated"
    result["bf16_datasheet_tflops"] = sheet and round(sheet / 1e12)
    print("\n1. matmul peak: " + ", ".join(f"{'fp32/TF32' if k == 'tf32' else k} {v / 1e12:.3g} TFLOP/s ({n}^3)"
                                         for k, (v, n) in peaks.items())
          + f"; data sheet bf16 {f'{sheet / 1e12:.0f} TFLOP/s' if sheet else 'unknown'}; bf16: {bf16_why}"
          + ("" if bf16_native else " (emulated: bf16 is not timed below)"))

    src, tgt = synthetic_pairs(n_train, vocab)
    rows = []
    for precision in precisions:
        rows.append(measure_training(cfg, src, tgt, vocab, device, precision, seconds))
    if not (args.no_compile or smoke) and bf16_native:  # compiling takes minutes on CPU; the smoke run stays short
        try:
            rows.append(measure_training(cfg, src, tgt, vocab, device, "bf16", seconds, compile_model=True))
        except Exception as e:  # a missing compiler toolchain must not hide the other figures
            print(f"   torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    peak = sheet or peaks.get("bf16", peaks["tf32"])[0]
    for r in rows:
        r["mfu_vs_bf16_peak"] = float(f"{r['tflops'] * 1e12 / peak:.3g}")
        r["mfu_vs_measured_mm"] = float(f"{r['tflops'] * 1e12 / peaks['bf16' if r['precision'] == 'bf16' else 'tf32'][0]:.3g}")
    result["training"] = rows
    print("\n2. training, target tokens/s\n" + table(rows))

    torch.manual_seed(0)
    model = Transformer(cfg.model, vocab, vocab).to(device).eval()
    dsrc, _ = synthetic_pairs(n_decode, vocab, seed=1)
    rows = []
    for beam in (1, 5):
        for batch in (16 if smoke else 64, n_decode):
            for precision in reversed(precisions):  # fp32 first
                try:
                    rows.append(measure_decoding(model, dsrc, device, beam, batch, precision))
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    half = batch // 2
                    rows.append({**measure_decoding(model, dsrc, device, beam, half, precision), "note": "OOM at "
                                 f"{batch}"})
    result["decoding"] = rows
    print(f"\n3. decoding {n_decode} sentences (untrained weights: outputs run to the length limit)\n" + table(rows))

    result["ddp"] = ddp_start(device, smoke)
    print(f"\n4. torchrun --nproc_per_node 1 -m mtkit train: {result['ddp']}")
    print("\n" + json.dumps(result))
    return 0 if result["ddp"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
