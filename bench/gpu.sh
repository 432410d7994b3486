#!/usr/bin/env bash
# The one command for the GPU machine, from the repository root:
#     bash bench/gpu.sh [python -m bench's options]
# Installs the peers' wheels from bench/wheels/ (bench/fetch_peers.sh), then
# cussim over the CuPy already there, runs the GPU tests and the benchmark.
# Results go to bench/results/<gpu>/<date>.{json,md,png}, or under $OUT when
# it is set (the device tool's folder that comes back), with the logs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
results="${OUT:-bench/results}"
mkdir -p "$results"
if compgen -G "bench/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/cussim-peers bench/wheels/*.whl || exit
    export PYTHONPATH=/tmp/cussim-peers${PYTHONPATH:+:$PYTHONPATH}
else
    echo "no wheels in bench/wheels: only the peers already installed will be timed"
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$results/gpu.txt"
python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$results/pytest-gpu.log"
tests=${PIPESTATUS[0]}
python3 -m bench --output "$results" "$@" 2>&1 | tee "$results/bench.log"
bench=${PIPESTATUS[0]}
echo "pytest -m gpu: exit $tests; python -m bench: exit $bench"
exit $(( tests != 0 || bench != 0 ))
