#!/usr/bin/env bash
# Run a command as if on another x86-64 CPU: qemu-user gives the program that CPU model's CPUID, so
# torch dispatches its kernels (int8 matmul, bf16, AVX-512 or AVX2 code) as it would on real
# hardware of that class. Which kernel runs, and whether its results are exact, is faithful;
# timings under emulation mean nothing. Needs Debian's qemu-user (`apt-get install qemu-user`).
#
#   bench/as_cpu.sh EPYC-Milan .venv/bin/python -c "import torch; print(torch.backends.cpu.get_cpu_capability())"
#   -> AVX2        (Zen 3: AVX2, no AVX-512, no VNNI)
#
# Restricting an AVX-512 CPU with ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY is NOT the same: those
# limit the generated kernels but not CPUID, and torch picks some paths (int8 matmul) from CPUID.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bench/as_cpu.sh CPU_MODEL COMMAND [ARG...]   (CPU models: qemu-x86_64 -cpu help)" >&2
  exit 2
fi
QEMU=${QEMU:-qemu-x86_64}
if ! command -v "$QEMU" >/dev/null; then
  echo "error: $QEMU not found; install Debian's qemu-user (apt-get install qemu-user)" >&2
  exit 127
fi
model=$1
shift
program=$(command -v "$1")
shift
exec "$QEMU" -cpu "$model" "$program" "$@"
