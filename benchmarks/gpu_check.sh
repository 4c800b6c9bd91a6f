#!/usr/bin/env bash
# One prepared GPU check for PaCa-ViT (issues 4 and 13). At most 9 minutes on one H100 (items that would start
# after --budget-s 420 s are skipped and marked so); downloads nothing.
#   benchmarks/gpu_check.sh                      # on the GPU machine; results in $OUT/gpu_results.json
#   benchmarks/gpu_check.sh --device cpu --quick # smoke test of the same code paths on a CPU
# Extra arguments go to benchmarks/gpu_check.py (--infer-batch, --train-batch, --budget-s, --no-compile,
# --extra-models preset@/path/to/modified/package).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # works without `pip install -e .`
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
{
  echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(hostname)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  "$PYTHON" - <<'PY'
import importlib
for name in ("torch", "timm", "transformers", "xformers", "pacavit"):
    try:
        module = importlib.import_module(name)
        print(f"{name:13s} {getattr(module, '__version__', '?')}")
    except Exception as error:
        print(f"{name:13s} MISSING ({type(error).__name__}: {error})")
PY
  timeout "${GPU_CHECK_TIMEOUT:-540}" "$PYTHON" benchmarks/gpu_check.py --out "$OUT/gpu_results.json" "$@"
  echo "exit status $?"
} 2>&1 | tee "$OUT/gpu_check.log"
