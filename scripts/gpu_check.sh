#!/usr/bin/env bash
# scripts/gpu_check.sh: the kernel core checked and measured on one NVIDIA H100/H200 in ONE command (<= 9 min).
#
# From the repository root, on the GPU machine:
#     bash scripts/gpu_check.sh            # results under $OUT (default ./gpu_check_out)
# CPU dry run of every step (Triton interpreter, tiny sizes; checks the script, not the GPU):
#     GPU_CHECK_DRY=1 bash scripts/gpu_check.sh
#
# Steps, each bounded by `timeout` (its cap, or what is left of the 540 s budget), in this order:
#   env         python / torch / triton / GPU, measured copy bandwidth
#   tests       tests/test_kernels.py + tests/test_fused_update.py on CUDA (TRITON_INTERPRET=0: the device fixture
#               builds every input on the GPU; bf16/fp16 cases run there)
#   cases       scripts/gpu_check_cases.py: ragged B, a table over 2^31 elements, bitwise-repeatable training steps
#   kernels     scripts/bench_kernels.py --quick --vocab 1000000 (tables of 39M rows, far beyond L2): fused vs
#               eager vs torch.compile, GB/s against the measured copy bandwidth
#   train       scripts/bench_train.py --device cuda: FM and DeepFM samples/s at batch 4096 on the Criteo-shaped
#               table, dense Adam vs the fused in-backward update (and the per-field baseline)
# Results are written as they are measured: $OUT/steps.jsonl (one line per step: status, rc, seconds),
# $OUT/cases.jsonl, $OUT/bench_kernels.json, $OUT/bench_train.json, $OUT/env.json, and every step's output in
# $OUT/logs.txt. A failing step does not stop the next one; the exit status is 1 if any step failed.
#
# The GPU machine's python may lack polars (dcollapse's data layer needs it): put its wheels in ./.whl (git-ignored;
# `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl
# polars==V polars-runtime-32==V`) and carry that folder; they are installed into a temporary folder, nothing is
# fetched. Without them the steps that import polars fail and say so. The package is staged with symlinks (no pip
# install): dcollapse.kernels = kernels/, dcollapse.cli = cli/.
# Knobs: GPU_CHECK_BUDGET (s, default 540), GPU_CHECK_STEPS (comma list, default all), PYTHON (default python3).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-$([ "$DRY" = 1 ] && echo 3000 || echo 540)}
STEPS=${GPU_CHECK_STEPS:-env,tests,cases,kernels,train}
OUT=${OUT:-$REPO/gpu_check_out}
START=$(date +%s)
WORK=$(mktemp -d -t gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$WORK/pkg/dcollapse"
: > "$OUT/steps.jsonl"; : > "$OUT/logs.txt"; : > "$OUT/cases.jsonl"

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ "$DRY" = 1 ] && [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3; fi

for f in "$REPO"/dcollapse/*; do ln -s "$f" "$WORK/pkg/dcollapse/"; done
ln -s "$REPO/kernels" "$WORK/pkg/dcollapse/kernels"
ln -s "$REPO/cli" "$WORK/pkg/dcollapse/cli"
export PYTHONPATH="$WORK/pkg:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export TRITON_CACHE_DIR=$WORK/triton_cache TORCHINDUCTOR_CACHE_DIR=$WORK/inductor_cache
if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1 DCOLLAPSE_KERNELS=triton OMP_NUM_THREADS=1 DEVICE=cpu SMALL=--small
    TEST_FILTER=(-k "lookup or scatter or segment or refusals")  # a subset: the interpreter is slow
    XDIST=()
    CAPX=5  # every cap x5 under the interpreter on a shared CPU
else
    export TRITON_INTERPRET=0 DEVICE=cuda SMALL=
    TEST_FILTER=()
    XDIST=(-n 4)  # four workers share the Triton cache: the ~100 kernel specialisations compile in parallel
    CAPX=1
fi

# polars from carried wheels when the python lacks it
if ! "$PY" -c "import polars" 2>/dev/null; then
    if ls "$REPO"/.whl/polars*.whl > /dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$REPO"/.whl/*.whl \
            >> "$OUT/logs.txt" 2>&1 || echo "polars wheels did not install (see logs.txt)"
    else
        echo "polars missing and no ./.whl/polars*.whl: the steps that import dcollapse.train will fail" | tee -a "$OUT/logs.txt"
    fi
fi

FAILED=0
# step NAME CAP CMD...: run CMD from $WORK under timeout min(CAP, budget left); one JSON line in steps.jsonl
step() {
    local name=$1 cap=$(( $2 * CAPX )); shift 2
    case ",$STEPS," in *",$name,"*) ;; *) echo "{\"step\": \"$name\", \"status\": \"skipped\"}" >> "$OUT/steps.jsonl"; return;; esac
    local left=$(( BUDGET - ($(date +%s) - START) ))
    local limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 10 ]; then
        echo "{\"step\": \"$name\", \"status\": \"no time left\"}" >> "$OUT/steps.jsonl"; FAILED=1; return
    fi
    echo "== $name (limit ${limit}s)" | tee -a "$OUT/logs.txt"
    local t0=$(date +%s) rc=0
    (cd "$WORK" && timeout --kill-after=10 "$limit" "$@") >> "$OUT/logs.txt" 2>&1 || rc=$?
    local status=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; elif [ "$rc" != 0 ]; then status=failed; fi
    [ "$status" = ok ] || FAILED=1
    echo "{\"step\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"limit\": $limit}" \
        | tee -a "$OUT/steps.jsonl"
}

cat > "$WORK/env.py" <<'EOF'
import json, os, sys, time
import torch, triton
info = {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.cuda.is_available(), "interpret": os.environ.get("TRITON_INTERPRET")}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name()
    src = torch.empty(1 << 28, device="cuda"); dst = torch.empty_like(src)
    for _ in range(3): dst.copy_(src)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20): dst.copy_(src)
    torch.cuda.synchronize()
    info["copy_GBps_read_plus_write"] = 20 * 2 * src.numel() * 4 / (time.perf_counter() - t) / 1e9
import dcollapse.kernels, polars
info["dcollapse_kernels"] = dcollapse.kernels.__file__
info["polars"] = polars.__version__
json.dump(info, open(sys.argv[1], "w"), indent=1); print(json.dumps(info))
EOF

step env 30 "$PY" "$WORK/env.py" "$OUT/env.json"
step tests 180 "$PY" -m pytest -q -rs "${XDIST[@]}" -p no:cacheprovider --rootdir "$REPO" "${TEST_FILTER[@]}" \
    "$REPO/tests/test_kernels.py" "$REPO/tests/test_fused_update.py"
step cases 80 "$PY" "$REPO/scripts/gpu_check_cases.py" --out "$OUT/cases.jsonl" $SMALL
if [ "$DRY" = 1 ]; then
    # bench_kernels refuses to time the interpreter: on the CPU it times the reference path (no Triton launch)
    step kernels 120 env TRITON_INTERPRET=0 DCOLLAPSE_KERNELS=auto "$PY" "$REPO/scripts/bench_kernels.py" --quick --vocab 200 --spectrum-rows 2000 --json "$OUT/bench_kernels.json"
    step train 120 "$PY" "$REPO/scripts/bench_train.py" --models FM --fields 8 --rows 2000 --batch 64 --steps 2 --repeats 1 \
        --no-compile --variants "ours dense,ours fused,baseline dense" --json "$OUT/bench_train.json"
else
    step kernels 120 "$PY" "$REPO/scripts/bench_kernels.py" --quick --vocab 1000000 --json "$OUT/bench_kernels.json"
    step train 120 "$PY" "$REPO/scripts/bench_train.py" --device cuda --models FM,DeepFM --rows 200000 --steps 20 \
        --repeats 3 --no-compile --variants "ours dense,ours fused,baseline dense" --json "$OUT/bench_train.json"
fi
echo "done in $(( $(date +%s) - START )) s; results in $OUT" | tee -a "$OUT/logs.txt"
cat "$OUT/steps.jsonl"
exit $FAILED
