#!/usr/bin/env bash
# Install the toolkits mtkit is compared with, each into its own venv under bench/.cache/peers/
# (never into mtkit's .venv, never a test dependency). Idempotent: a venv that imports is kept.
#   bash bench/peers/install.sh [joeynmt] [onmt] [ct2]      (default: all three)
# JoeyNMT 2.3.0 runs over the same torch as mtkit (2.13.0). OpenNMT-py 3.5.1 pins torch<2.2,
# so pip picks an older torch for it (a CUDA build of several GB where no CPU wheel is at hand).
# CTranslate2 decodes the OpenNMT-py model converted with its own converter; it lives in the
# OpenNMT-py venv because the converter imports OpenNMT-py.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=bench/.cache/peers
PYTHON=${PYTHON:-python3}
mkdir -p "$ROOT"
want=("$@"); [ ${#want[@]} -eq 0 ] && want=(joeynmt onmt ct2)

venv() {  # venv NAME -> creates $ROOT/NAME with an up-to-date pip
  [ -x "$ROOT/$1/bin/python" ] || "$PYTHON" -m venv "$ROOT/$1"
}
for peer in "${want[@]}"; do
  case $peer in
    joeynmt)
      venv joeynmt
      if ! "$ROOT/joeynmt/bin/python" -c "import joeynmt.__main__" 2>/dev/null; then
        "$ROOT/joeynmt/bin/pip" install -q torch==2.13.0
        # importlib_metadata: joeynmt 2.3.0 imports it without declaring it.
        "$ROOT/joeynmt/bin/pip" install -q joeynmt==2.3.0 "torch==2.13.0" importlib_metadata
      fi
      "$ROOT/joeynmt/bin/python" -c "import joeynmt, torch; print('joeynmt', joeynmt.__version__, 'torch', torch.__version__)";;
    onmt|ct2)
      venv onmt
      if ! "$ROOT/onmt/bin/python" -W error -c "import numpy, onmt; assert numpy.__version__ < '2'" 2>/dev/null; then
        # numpy<2: the torch 2.2 that OpenNMT-py 3.5.1 gets was built against NumPy 1.x.
        "$ROOT/onmt/bin/pip" install -q OpenNMT-py==3.5.1 "numpy<2"
      fi
      if [ "$peer" = ct2 ] && ! "$ROOT/onmt/bin/python" -c "import ctranslate2" 2>/dev/null; then
        "$ROOT/onmt/bin/pip" install -q ctranslate2
      fi
      "$ROOT/onmt/bin/python" -c "import onmt, torch; print('OpenNMT-py', onmt.__version__, 'torch', torch.__version__)"
      [ "$peer" = ct2 ] && "$ROOT/onmt/bin/python" -c "import ctranslate2; print('CTranslate2', ctranslate2.__version__)";;
    *) echo "error: unknown peer '$peer' (choose joeynmt, onmt, ct2)" >&2; exit 2;;
  esac
done
