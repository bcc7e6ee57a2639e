#!/usr/bin/env bash
# Every GPU check and benchmark of issue 11 in one command, for a GPU machine lent for a few
# minutes with no network (PyTorch there, not zarr or dask: they travel as wheels).
#
#   bench/gpu_session.sh wheels   # here, with PyPI: Python 3.12 wheels of what the GPU image lacks, into .whl/
#   bench/gpu_session.sh run      # there, from the repository root, .whl/ carried along
#
# `run` installs the wheels into /tmp/site, then runs, each under its own time limit so that
# one hang cannot eat the rest: the GPU tests (`pytest -m gpu`: captured step against eager,
# a CUDA dump verified with its own numerics), then bench/bench_gpu.py (eager and captured
# (a) CE, (b) offline RLD, (c) online RLD; K = 1, 2, 4 students sharing the GPU). Logs and
# JSON results go to $OUT (default bench/results). About 8 minutes of limits in all.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 dask==2026.8.0
        partd==1.4.2 locket==1.0.0 importlib_metadata==10.2.0)

case "${1:-}" in
wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    ls .whl
    ;;
run)
    OUT=${OUT:-bench/results}
    mkdir -p "$OUT"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
    timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu.log"
    timeout 330 python3 bench/bench_gpu.py 2>&1 | tee "$OUT/bench-gpu.log"
    [ "$OUT" -ef bench/results ] || cp bench/results/*-cuda.json "$OUT"/ 2>/dev/null
    ;;
*)
    echo "usage: $0 wheels|run" >&2
    exit 2
    ;;
esac
