#!/usr/bin/env bash
# The GPU run, on a machine that has Python with CUDA torch but no ComfyUI and no network: installs the
# bundle's wheels into a folder of their own, then runs the benchmark from the bundle. Results go to $OUT
# (the device tool's return folder) or ./bench-out.
#
#   bash tools/bench/run_on_device.sh [benchmark options, e.g. --budget 480 --only "lever: bf16"]
#
# BENCH_BUNDLE (default .bench-bundle), BENCH_SITE (default /tmp/ida-bench-site) and PYTHON (default
# python3) can be set; the CPU proof in tests/test_bench_bundle.py sets all three.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUNDLE="${BENCH_BUNDLE:-.bench-bundle}"
SITE="${BENCH_SITE:-/tmp/ida-bench-site}"
PY="${PYTHON:-python3}"
[[ -f "$BUNDLE/MANIFEST.json" ]] || { echo "no bench bundle in $BUNDLE: run \`make bench-bundle\` first and carry it" >&2; exit 2; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$BUNDLE"/wheels/*.whl
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('[bench] torch', torch.__version__, 'CUDA', torch.cuda.is_available())"
exec "$PY" tools/benchmark.py --bundle "$BUNDLE" --out "${OUT:-bench-out}" --no-write "$@"
