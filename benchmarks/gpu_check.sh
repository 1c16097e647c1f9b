#!/usr/bin/env bash
# GPU check kit: on a bare GPU machine without network, install the project, build the CUDA
# extension, run the GPU tests, time one training step of each trainer and a reduced end-to-end
# throughput run; write what happened to OUT.
#
#   bash benchmarks/gpu_check.sh OUT                  # on the GPU machine: under 8 minutes on an H200
#   bash benchmarks/gpu_check.sh --cpu-dry-run OUT    # the same parts on the CPU with tiny sizes (CI)
#
# OUT gets at most 8 files: env.txt, build.log (install + extension build), pytest.xml, pytest.log,
# steps.json, throughput.json, throughput.md and summary.md (every part: ok / failed / timeout /
# skipped, seconds, why; test counts; the step table; logs of what failed). Each part runs under
# its own time limit, capped so that the whole stays within --budget SECONDS (default 450; 200 for
# the dry run) and a failing or hanging part does not lose the others.
#
# Options: --images DIR (photos for the throughput run; default samples/hr, in git - or
# .devcarry/images from benchmarks/gpu_carry.sh), --budget SECONDS.
# Environment: PYTHON (default: the first of .venv/bin/python, python3, python that imports torch),
# MAX_JOBS (parallel compile jobs).
# The dry run installs nothing: it imports the package through the PYTHONPATH shim (the fallback
# when pip cannot install) and uses the pure-PyTorch masked crop (MKGAN_DISABLE_CPP_EXT=1).
set -u

DRY=0
BUDGET=""
IMAGES=""
OUT=""
while (($#)); do
  case $1 in
    --cpu-dry-run) DRY=1 ;;
    --budget) BUDGET=$2; shift ;;
    --images) IMAGES=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) OUT=$1 ;;
  esac
  shift
done
[[ -n $OUT ]] || { echo "usage: bash benchmarks/gpu_check.sh [--cpu-dry-run] [--budget S] [--images DIR] OUT" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # logs, the shim, the extension build: not in OUT
trap 'rm -rf "$WORK"' EXIT
BUDGET=${BUDGET:-$((DRY ? 200 : 450))}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
IMAGES=${IMAGES:-$REPO/samples/hr}
: >"$WORK/status.tsv"

for candidate in "${PYTHON:-}" "$REPO/.venv/bin/python" python3 python; do
  if [[ -n $candidate ]] && "$candidate" -c "import torch" >/dev/null 2>&1; then PY=$candidate; break; fi
done
if [[ ${PY:-} == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; fi  # parts run elsewhere too
PY=${PY:-python3}
export PY REPO WORK DRY

# record NAME STATUS SECONDS NOTE: one line of the summary's table (plus $WORK/note, if a part left one).
record() {
  local note=$4
  if [[ -s $WORK/note ]]; then note="${note:+$note; }$(tr '\n' ' ' <"$WORK/note")"; rm -f "$WORK/note"; fi
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$note" >>"$WORK/status.tsv"
  echo "[gpu_check] $1: $2 (${3}s) $note"
}

# run_part NAME CAP RESERVE LOG CMD...: CMD under min(CAP, budget left - RESERVE) seconds (RESERVE:
# what the later parts need at least), output appended to LOG; the outcome is recorded.
run_part() {
  local name=$1 cap=$2 reserve=$3 log=$4
  shift 4
  local left=$((DEADLINE - $(date +%s) - reserve))
  local limit=$((cap < left ? cap : left))
  if ((limit < 5)); then record "$name" skipped 0 "no time left in the ${BUDGET}s budget"; return 1; fi
  local t0
  t0=$(date +%s)
  echo "### $name (limit ${limit}s): $*" >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  case $rc in
    0) record "$name" ok "$dt" "" ;;
    124 | 137) record "$name" timeout "$dt" "stopped after ${limit}s" ;;
    *) record "$name" failed "$dt" "exit code $rc" ;;
  esac
  return "$rc"
}

write_env() {
  date -u
  echo "mode: $([[ $DRY == 1 ]] && echo 'CPU dry run' || echo GPU); python: $PY; repo: $REPO"
  (cd "$REPO" && git rev-parse HEAD 2>/dev/null) || echo "git: n/a"
  echo "cpus: $(nproc --all 2>/dev/null)"; free -g 2>/dev/null | head -2; df -h "$REPO" 2>/dev/null | tail -1
  echo; nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo; nvcc --version 2>&1 | tail -2 || true
  echo "ninja: $(ninja --version 2>&1)"; echo "c++: $(c++ --version 2>&1 | head -1)"
  echo
  "$PY" - <<'EOF'
import importlib, importlib.util, platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{p.multi_processor_count} SMs, bf16: {torch.cuda.is_bf16_supported()}")
for name in ("numpy", "scipy", "skimage", "cv2", "PIL", "typer", "rich", "pytest", "ninja", "setuptools"):
    try:
        print(f"{name}: {getattr(importlib.import_module(name), '__version__', 'installed')}")
    except Exception as error:  # noqa: BLE001 - reported; the parts that need it fail on their own
        print(f"{name}: absent ({type(error).__name__})")
for name in ("ultralytics", "segment_anything", "onnx", "onnxruntime", "tensorrt"):  # optional, heavy: not imported
    print(f"{name}: {'present' if importlib.util.find_spec(name) else 'absent'} (optional)")
EOF
}

# make_shim: $WORK/shim/mkgan_engine/... mirroring pyproject's package-dir (engine/ -> mkgan_engine,
# train/ -> mkgan_engine.train, ...) with symlinks, for PYTHONPATH=$WORK/shim.
make_shim() {
  "$PY" - "$REPO" "$WORK/shim" <<'EOF'
import sys, tomllib
from pathlib import Path
repo, shim = Path(sys.argv[1]), Path(sys.argv[2])
mapping = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
for package, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):  # parents first
    target = shim.joinpath(*package.split("."))
    target.mkdir(parents=True, exist_ok=True)
    for entry in (repo / folder).iterdir():
        if not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)
print(f"shim {shim}: " + ", ".join(f"{p} -> {f}/" for p, f in mapping.items()))
EOF
}

check_import() {  # from outside the repo, so that only an installed (or shimmed) package is found
  (cd "$WORK" && "$PY" -c "import mkgan_engine, mkgan_engine.pipeline, mkgan_engine.train.kernelgan, mkgan_engine.cpp_ext; print('imports', mkgan_engine.__file__)")
}

install_project() {
  if [[ $DRY == 0 ]]; then
    if "$PY" -m pip install --no-index --no-build-isolation --no-deps -e "$REPO" && check_import; then
      echo "pip install -e (editable)" >"$WORK/note"; return 0
    fi
    echo "pip install failed: falling back to the PYTHONPATH shim"
  fi
  make_shim || return 1
  echo "$WORK/shim" >"$WORK/pythonpath"
  PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}" check_import || return 1
  echo "PYTHONPATH shim$([[ $DRY == 1 ]] && echo ' (dry run: pip not run)')" >"$WORK/note"
}

build_extension() {
  "$PY" - <<'EOF'
import logging, sys, time
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")  # build errors in full
from mkgan_engine.cpp_ext import masked_crop_status
t0 = time.perf_counter()
status = masked_crop_status(build=True)
print(f"{time.perf_counter() - t0:.0f} s:", status)
sys.exit(0 if status["backend"] == "cpp-cuda" else 1)
EOF
  local rc=$?
  ((rc == 0)) || echo "CUDA op not built: the pure-PyTorch fallback is used" >"$WORK/note"
  return "$rc"
}
export -f write_env make_shim check_import install_project build_extension

# ---------------------------------------------------------------------------------------- parts
run_part env 30 100 "$OUT/env.txt" bash -c write_env
run_part install 150 90 "$OUT/build.log" bash -c install_project
if [[ -s $WORK/pythonpath ]]; then export PYTHONPATH="$(cat "$WORK/pythonpath")${PYTHONPATH:+:$PYTHONPATH}"; fi

export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions"  # a fresh build, reused by the later parts
if [[ $DRY == 1 ]]; then
  export MKGAN_DISABLE_CPP_EXT=1
  record build skipped 0 "dry run: MKGAN_DISABLE_CPP_EXT=1, the pure-PyTorch masked crop"
else
  run_part build 240 75 "$OUT/build.log" bash -c build_extension
fi

TESTS=(tests/test_gpu.py)
[[ $DRY == 1 ]] || TESTS+=(tests/test_masked_crop.py)
run_part pytest 240 45 "$OUT/pytest.log" "$PY" -m pytest "${TESTS[@]}" -p no:cacheprovider -rA \
  --junitxml="$OUT/pytest.xml"

if [[ $DRY == 1 ]]; then
  STEPS=(--cpu --members 1,2)
  THROUGHPUT=(--device cpu --preset fast --size 64 --images 1 --kernelgan iterations=4 --zssr iterations=4
    --zssr min_iterations=2 --zssr crop_size=24 --zssr channels=8 --zssr ensemble=1)
else
  STEPS=(--members 1,2,8,64)
  THROUGHPUT=(--device cuda --preset paper --size 256 --images 2 --warmup 1 --kernelgan iterations=1000
    --zssr iterations=1000)
fi
run_part steps 150 25 "$WORK/steps.log" "$PY" benchmarks/gpu_steps.py "${STEPS[@]}" --out "$OUT/steps.json"
run_part throughput 200 5 "$WORK/throughput.log" "$PY" benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" \
  --dir "$IMAGES" --json "$OUT/throughput.json" --results "$OUT/throughput.md" --section throughput

# ---------------------------------------------------------------------------------------- summary
if ! "$PY" benchmarks/gpu_summary.py "$OUT" "$WORK" "$((DRY))" "$(($(date +%s) - START))" >"$WORK/summary.log" 2>&1; then
  {
    echo "# GPU check summary (plain: benchmarks/gpu_summary.py failed)"; echo
    echo "| part | status | seconds | note |"; echo "|---|---|---|---|"
    while IFS=$'\t' read -r name status seconds note; do echo "| $name | $status | $seconds | $note |"; done <"$WORK/status.tsv"
    echo; echo '```'; tail -n 20 "$WORK/summary.log"; echo '```'
  } >"$OUT/summary.md"
fi
echo "[gpu_check] done in $(($(date +%s) - START)) s; summary: $OUT/summary.md"
