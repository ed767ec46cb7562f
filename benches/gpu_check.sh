#!/usr/bin/env bash
# The GPU check of issue 15 in one command (what it measures: benches/bench_gpu_check.py).
#
#   benches/gpu_check.sh              on the GPU machine: installs lna (and the carried wheels in
#                                     .whl/, see benches/gpu_wheels.sh) without a registry, runs
#                                     every stage in ~7 minutes, results to benches/results and $OUT
#   benches/gpu_check.sh --dry-run    the same code paths on CPU at tiny shapes (tests run this)
#
# Other arguments go to bench_gpu_check.py: --budget SECONDS, --stages kernels,profile,smoke,candidates,
# --results DIR. PYTHON picks the interpreter (default python3: on the GPU machine, the image's).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

dry=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done

if [ "$dry" = 1 ]; then
    export TRITON_INTERPRET=1  # before any kernel module is imported (the children inherit it)
else
    unset TRITON_INTERPRET
    # Install into a folder of our own: the image's environment stays as it is, and nothing
    # is fetched (--no-index); the image has setuptools for building lna itself.
    site=${LNA_SITE:-/tmp/lna-site}
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
            || echo "gpu_check: the carried wheels in .whl/ did not install: the smoke stage (zarr) will fail" >&2
    else
        echo "gpu_check: no .whl/ carried (benches/gpu_wheels.sh): without zarr the smoke stage will fail" >&2
    fi
    if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
            --target "$site" . ; then
        export LNA_INSTALL="pip install --target $site"
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check: pip could not install lna; running it from the checkout" >&2
        export LNA_INSTALL="from the checkout (pip install failed)"
        export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem --format=csv || true
fi

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    "$PY" benches/bench_gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
exec "$PY" benches/bench_gpu_check.py "$@"
