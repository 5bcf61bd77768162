#!/usr/bin/env bash
# The accelerator check, prepared to run unattended on a GPU/TPU machine with its own JAX, no internet and
# no TensorFlow (bench/accelerator.py reads the four Fashion-MNIST files directly):
#
#   mkdir -p bench/data/fashion-mnist && cp ../shared/data/fashion-mnist/*-ubyte.gz bench/data/fashion-mnist/
#   bash bench/accelerator.sh [DATA_DIR]          # results: $OUT/accelerator.json (or ./accelerator.json)
#
# Python packages the machine lacks (flax, optax, pydantic, ...) are installed from bench/wheels/ when that
# folder exists (pip download -d bench/wheels flax optax pydantic ... on a machine with internet).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${FMNIST_DATA_DIR:-bench/data/fashion-mnist}}"
RESULT="${OUT:-.}/accelerator.json"
PY="${PYTHON:-python3}"

missing=$("$PY" - <<'PY'
import importlib.util
need = ["jax", "flax", "optax", "numpy", "pydantic", "PIL"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$missing" ]; then
  if [ -d bench/wheels ]; then
    echo "installing from bench/wheels: $missing"
    "$PY" -m pip install --no-index --find-links bench/wheels ${missing/PIL/pillow}
  else
    echo "missing Python packages: $missing (put their wheels in bench/wheels/)" >&2
    exit 2
  fi
fi
"$PY" -c "import jax; print('JAX', jax.__version__, jax.devices())"
"$PY" bench/accelerator.py --data "$DATA" --json | tee /dev/stderr | tail -n 1 > "$RESULT"
echo "wrote $RESULT"
