#!/usr/bin/env bash
# The one command of a GPU session (bench/NOTES.md, "The GPU session"), from the repository root:
#     bash bench/gpu.sh              on the GPU machine: at most 8 minutes, results under $OUT
#     bash bench/gpu.sh --rehearse   without a GPU: every step's Python on the emulator at small sizes,
#                                    every tool looked up (present / missing), the summary written
#     --steps=bd                     only those steps (a second try); CUSSIM_GPU_BUDGET=SECONDS (465)
# Steps, most valuable first, each under its own timeout and all within BUDGET seconds:
#   install  the peers' wheels (bench/wheels, from bench/fetch_peers.sh) and cussim (editable, no deps)
#            over the CuPy there; fussim's source distribution built in the background if its kernels
#            do not load
#   a  environment: GPU, driver, CuPy, NVRTC, CUDA headers, seconds from import cussim to a result
#   b  smoke test of every public path on CuPy arrays against the float64 reference
#   c  pytest -m gpu, bounded (--maxfail, pytest-xdist and pytest-timeout where present)
#   d  python -m bench --quick (results: <gpu>/<date>.json, .md, .png)
#   e  Nsight Compute on the three hot launches, one each, five sections
#   f  compute-sanitizer memcheck and racecheck over a small forward + backward + MS-SSIM
# After every step summary.txt gets its lines and logs.tar.gz (every step's full log) is rewritten, so
# a run cut off returns everything before the cut. Under $OUT (a temporary folder without it): at most
# summary.txt, logs.tar.gz and the benchmark's three files.
set -uo pipefail
cd "$(dirname "$0")/.."
rehearse=0
steps=abcdef
for arg in "$@"; do
    case $arg in
        --rehearse) rehearse=1 ;;
        --steps=*) steps=${arg#--steps=} ;;
        *) echo "usage: bash bench/gpu.sh [--rehearse] [--steps=abcdef]" >&2; exit 2 ;;
    esac
done
wants() { [[ $steps == *$1* ]]; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
out=${OUT:-$(mktemp -d)}
work=$(mktemp -d)
logs=$work/logs
mkdir -p "$out" "$logs"
summary=$out/summary.txt
: >"$summary"
BUDGET=${CUSSIM_GPU_BUDGET:-465}
started=$SECONDS
failed=0
XDIST_WORKERS=8
NCU_SECTIONS=(--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
              --section MemoryWorkloadAnalysis)
declare -A STEP_NAMES
HOT_KERNELS="regex:ssim_(forward|backward)"   # ssim: the value's forward; ssim_with_gradient: forward, backward

note() { echo "$*" | tee -a "$summary"; }

archive() {  # every log so far, in one file that comes back
    tar -czf "$out/logs.tar.gz.part" -C "$work" logs && mv "$out/logs.tar.gz.part" "$out/logs.tar.gz"
}

# run NAME LIMIT COMMAND...: COMMAND under timeout (SIGINT at LIMIT seconds or when the budget runs out,
# so Python and pytest print what they have; SIGKILL 10 s later), its output in logs/NAME.log.
run() {
    local name=$1 limit=$2 left
    shift 2
    left=$(( BUDGET - (SECONDS - started) ))
    if (( left < limit )); then limit=$left; fi
    if (( limit < 5 )); then
        echo "skipped: the budget of $BUDGET s is spent" >"$logs/$name.log"
        return 124
    fi
    local t0=$SECONDS
    timeout -s INT -k 10 "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    echo "[exit $rc after $(( SECONDS - t0 )) s, limit $limit s]" >>"$logs/$name.log"
    return $rc
}

# verdict LETTER NAME RC: the step's line in the summary
verdict() {
    local word=ok
    case $3 in
        0) ;;
        124|130|137) word="CUT OFF (time limit)"; failed=1 ;;
        *) word="FAILED (exit $3)"; failed=1 ;;
    esac
    note "$1 $2: $word, $(( SECONDS - started )) s into the run"
}

tool() {  # the path of a command-line tool, also where the CUDA toolkit keeps it off the PATH
    command -v "$1" 2>/dev/null || ls -d /usr/local/cuda/bin/"$1" /opt/nvidia/nsight-compute/*/"$1" \
        /usr/local/cuda/compute-sanitizer/"$1" 2>/dev/null | tail -n 1
}

# --- tools and packages --------------------------------------------------------------------------
{
    echo "cussim GPU run ($([ $rehearse = 1 ] && echo rehearsal || echo GPU)), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    missing=()
    for t in nvidia-smi nvcc ninja ncu compute-sanitizer; do
        path=$(tool "$t")
        if [ -n "$path" ]; then echo "tool $t: $path"; else missing+=("$t"); fi
    done
    echo "tools missing: ${missing[*]:-none}"
} | tee -a "$summary" >"$logs/tools.log"
timeout 60 "$py" - >>"$logs/tools.log" 2>&1 <<'EOF'
import importlib, importlib.metadata as md
for module, package in [("cupy", None), ("torch", None), ("torchvision", None), ("torchmetrics", None),
                        ("skimage", "scikit-image"), ("scipy", None), ("matplotlib", None), ("pytest", None),
                        ("xdist", "pytest-xdist"), ("pytest_timeout", "pytest-timeout"), ("setuptools", None),
                        ("wheel", None), ("fussim", None), ("pytorch_msssim", "pytorch-msssim"), ("kornia", None),
                        ("piq", None), ("cucim", None)]:
    try:
        importlib.import_module(module)
        print(f"python {module}: {md.version(package or module)}")
    except Exception as exc:
        print(f"python {module}: missing ({type(exc).__name__}: {exc})")
EOF
note "python modules missing before the install: $(grep -c ': missing' "$logs/tools.log") ($(grep ': missing' "$logs/tools.log" | cut -d: -f1 | sed 's/^python //' | tr '\n' ' '))"
ls -l bench/wheels >>"$logs/tools.log" 2>&1
absent=()
for pin in $(sed -n 's/^PEERS=(\(.*\))$/\1/p; s/^FUSSIM_SOURCE=//p' bench/fetch_peers.sh); do
    name=${pin%%==*}
    compgen -G "bench/wheels/${name//-/_}-${pin##*==}[-.]*" >/dev/null || absent+=("$pin")
done
note "bench/wheels: $(ls bench/wheels 2>/dev/null | wc -l) files; of bench/fetch_peers.sh's pins absent: ${absent[*]:-none}"

# --- install: the peers' wheels, cussim over the CuPy there, fussim built if its kernels do not load --
fussim_build=
if [ $rehearse = 0 ]; then
    if compgen -G "bench/wheels/*.whl" >/dev/null; then
        run install-peers 60 "$py" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/cussim-peers bench/wheels/*.whl
        verdict - "peers' wheels into /tmp/cussim-peers" $?
        export PYTHONPATH="$PYTHONPATH:/tmp/cussim-peers"
    fi
    run install-cussim 60 "$py" -m pip install --no-deps --no-build-isolation -e .
    verdict - "pip install --no-deps --no-build-isolation -e ." $?
    fussim_check=(-c "import torch, fussim; t = torch.rand(1, 3, 32, 32, device='cuda'); print('fussim', fussim.__version__, float(fussim.fused_ssim(t, t)))")
    if ! wants d; then
        :
    elif run fussim-check 60 "$py" "${fussim_check[@]}"; then
        note "- fussim: $(grep '^fussim' "$logs/fussim-check.log")"
    elif compgen -G "bench/wheels/fussim-*.tar.gz" >/dev/null; then
        note "- fussim's wheel does not run here ($(tail -n 2 "$logs/fussim-check.log" | head -n 1 | cut -c1-120)); building its source distribution in the background"
        arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1)
        ( export TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=4 PATH="$PATH:/usr/local/cuda/bin"
          timeout 300 nice "$py" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade \
              --target /tmp/cussim-peers bench/wheels/fussim-*.tar.gz ) >"$logs/fussim-build.log" 2>&1 &
        fussim_build=$!
    else
        note "- fussim does not run here and bench/wheels holds no source distribution of it"
    fi
else
    "$py" -c "import setuptools; assert int(setuptools.__version__.split('.')[0]) >= 64, setuptools.__version__" \
        >>"$logs/tools.log" 2>&1
    verdict - "setuptools >= 64 (pyproject.toml) for pip install -e ." $?
fi
archive

# --- the steps: each appends its lines to the summary; its exit status is the step's ----------------
rehearsal_flag=()
if [ $rehearse = 1 ]; then rehearsal_flag=(--rehearse); fi

step_a() {  # environment
    if [ $rehearse = 0 ]; then
        timeout 20 nvidia-smi --format=csv \
            --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm,clocks.sm,temperature.gpu \
            >"$logs/nvidia-smi.log" 2>&1
        timeout 20 nvidia-smi >>"$logs/nvidia-smi.log" 2>&1
        timeout 20 "$(tool nvcc)" --version >>"$logs/nvidia-smi.log" 2>&1
        sed -n 2p "$logs/nvidia-smi.log" | sed 's/^/  /' | tee -a "$summary"
    fi
    run a-environment 60 "$py" -m bench.gpu_smoke environment "${rehearsal_flag[@]}"
    local rc=$?
    grep -E "^(python|CUDA runtime|device|CuPy|import cussim|peers|  fussim)" "$logs/a-environment.log" \
        | cut -c1-160 | sed 's/^/  /' | tee -a "$summary"
    return $rc
}

step_b() {  # smoke test
    run b-smoke 100 "$py" -m bench.gpu_smoke smoke "${rehearsal_flag[@]}"
    local rc=$?
    note "  $(grep -c '^ok' "$logs/b-smoke.log") ok, $(grep -c '^skip' "$logs/b-smoke.log") skipped, $(grep -c '^FAIL' "$logs/b-smoke.log") FAIL"
    grep '^FAIL' "$logs/b-smoke.log" | head -n 8 | cut -c1-200 | sed 's/^/  /' | tee -a "$summary"
    return $rc
}

step_c() {  # pytest -m gpu; rehearsed as a collection with the same options (the GPU tests' imports)
    local options=(-m "gpu and not slow" -q -p no:cacheprovider --maxfail=25)
    if "$py" -c "import xdist" 2>/dev/null; then
        options+=(-n "$([ $rehearse = 1 ] && echo 0 || echo $XDIST_WORKERS)")
    fi
    if "$py" -c "import pytest_timeout" 2>/dev/null; then options+=(--timeout=120); fi
    if [ $rehearse = 1 ]; then options+=(--collect-only); fi
    run c-pytest 170 "$py" -m pytest "${options[@]}"
    local rc=$?
    note "  pytest ${options[*]}: $(grep -E '(passed|failed|error|collected|no tests ran|interrupted)' "$logs/c-pytest.log" | tail -n 1)"
    grep -E '^(FAILED|ERROR) ' "$logs/c-pytest.log" | head -n 8 | cut -c1-200 | sed 's/^/  /' | tee -a "$summary"
    return $rc
}

wait_for_fussim() {  # the background build, for as long as d, e and f can spare
    local left=$(( BUDGET - (SECONDS - started) - 150 )) waited=0
    while kill -0 "$fussim_build" 2>/dev/null && (( waited < left )); do sleep 2; waited=$(( waited + 2 )); done
    if kill -0 "$fussim_build" 2>/dev/null; then
        kill "$fussim_build"
        note "- fussim's build did not finish in time: the benchmark runs without it"
    elif run fussim-recheck 60 "$py" "${fussim_check[@]}"; then
        note "- fussim built from its source distribution: $(grep '^fussim' "$logs/fussim-recheck.log")"
    else
        note "- fussim's build failed: $(tail -n 3 "$logs/fussim-build.log" | tr '\n' ' ' | cut -c1-160)"
    fi
}

step_d() {  # python -m bench --quick; rehearsed on the stand-in at small sizes
    if [ -n "$fussim_build" ]; then wait_for_fussim; fi
    if [ $rehearse = 0 ]; then
        run d-bench 110 "$py" -m bench --quick --output "$out"
    else
        run d-bench 110 "$py" -m bench --quick --rehearse --repeats 2 --output "$out"
    fi
    local rc=$?
    "$py" -m bench.gpu_smoke bench-summary --results "$out" 2>&1 | head -n 14 | sed 's/^/  /' | tee -a "$summary"
    return $rc
}

step_e() {  # Nsight Compute: the three hot launches, one each
    local ncu rc
    ncu=$(tool ncu)
    local command=(--target-processes all --clock-control none --kernel-name-base function -k "$HOT_KERNELS" -c 3
                   "${NCU_SECTIONS[@]}" -f -o "$logs/ncu-hot" "$py" -m bench.gpu_smoke profile)
    if [ $rehearse = 1 ]; then
        echo "on the GPU: ncu ${command[*]}" >"$logs/e-ncu-command.log"
        run e-ncu 60 "$py" -m bench.gpu_smoke profile --rehearse
        rc=$?
        grep '^profiled' "$logs/e-ncu.log" | sed 's/^/  /' | tee -a "$summary"
        return $rc
    fi
    if [ -z "$ncu" ]; then note "  ncu not found"; return 127; fi
    run e-ncu 75 "$ncu" "${command[@]}"
    rc=$?
    run e-ncu-details 30 "$ncu" -i "$logs/ncu-hot.ncu-rep" --page details
    "$py" -m bench.gpu_smoke ncu-summary --results "$logs/e-ncu-details.log" 2>&1 | head -n 6 | sed 's/^/  /' \
        | tee -a "$summary"
    return $rc
}

step_f() {  # compute-sanitizer, memcheck then racecheck
    local sanitizer check rc worst=0
    sanitizer=$(tool compute-sanitizer)
    for check in memcheck racecheck; do
        local command=(--tool "$check" --error-exitcode 3 --print-limit 20 "$py" -m bench.gpu_smoke sanitize)
        if [ $rehearse = 1 ]; then
            echo "on the GPU: compute-sanitizer ${command[*]}" >"$logs/f-$check-command.log"
            run "f-$check" 60 "$py" -m bench.gpu_smoke sanitize --rehearse
            rc=$?
            grep '^sanitized' "$logs/f-$check.log" | sed "s/^/  $check: /" | tee -a "$summary"
        elif [ -n "$sanitizer" ]; then
            run "f-$check" 70 "$sanitizer" "${command[@]}"
            rc=$?
            grep -E "(ERROR|RACECHECK) SUMMARY|^sanitized" "$logs/f-$check.log" | head -n 3 | sed "s/^/  $check: /" \
                | tee -a "$summary"
        else
            note "  compute-sanitizer not found"
            rc=127
        fi
        if (( rc != 0 )); then worst=$rc; fi
        archive
    done
    return $worst
}

STEP_NAMES=([a]=environment [b]="smoke test (bench/gpu_smoke.py)" [c]="pytest -m gpu" [d]="python -m bench --quick"
            [e]="Nsight Compute, 3 hot launches" [f]="compute-sanitizer memcheck, racecheck")
for letter in a b c d e f; do
    if wants $letter; then
        "step_$letter"
        verdict $letter "${STEP_NAMES[$letter]}" $?
        archive
    fi
done

note "done in $(( SECONDS - started )) s of a $BUDGET s budget; $([ $failed = 0 ] && echo 'every step ok' || echo 'some step FAILED or was cut off: read logs.tar.gz')"
note "files under $out: $(cd "$out" && find . -type f | sort | tr '\n' ' ')"
archive
exit $failed
