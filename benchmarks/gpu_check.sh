#!/usr/bin/env bash
# The GPU check: what a GPU does for this project, in under 10 minutes, on a machine that has
# only a CUDA torch (2.11 or later) and no network. Writes OUT_DIR/gpu_check.json and .png
# (benchmarks/gpu_check.py says what is measured; docs/NOTES.md records the runs).
#
#   benchmarks/gpu_check.sh OUT_DIR [--smoke] [gpu_check.py options]
#
# 1. Wheels: the project and the pure-Python packages the GPU machine lacks, built beforehand
#    where PyPI is reachable, into the git-ignored build/wheels/ (carry it to the machine):
#        .venv/bin/pip wheel -c constraints.txt --no-deps -w build/wheels . webdataset braceexpand
#    (or VIEWFUSION_WHEELS=<folder>). numpy, pillow, pyyaml and matplotlib come with the
#    machine's python (the lent GPU machine has them; see ENVIRONMENT.md).
# 2. Install, offline: the wheels are unpacked into OUT_DIR/site (pure-Python wheels are zip
#    files of importable modules: no pip, no index, no dependency resolution that would reach
#    for a second torch), put first on PYTHONPATH.
# 3. Run: $PYTHON (default python3) benchmarks/gpu_check.py --out OUT_DIR, under `timeout`
#    (VIEWFUSION_GPU_CHECK_TIMEOUT, default 600 s).
# --smoke: the tiny model on whatever torch is there (CPU too), in seconds: tests/test_gpu_check.py.
set -euo pipefail
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-}
[[ -n $out && $out != -* ]] || die "usage: benchmarks/gpu_check.sh OUT_DIR [--smoke] [options]"
shift
PYTHON=${PYTHON:-python3}
wheels=${VIEWFUSION_WHEELS:-$repo/build/wheels}
smoke=0
for a in "$@"; do [[ $a == --smoke ]] && smoke=1; done
mkdir -p "$out"

# --- 1. torch -------------------------------------------------------------------------------
"$PYTHON" - "$smoke" <<'PY' || exit 2
import sys
try:
    import torch
except ImportError:
    sys.exit("gpu_check.sh: error: this python has no torch (set PYTHON to the one with the CUDA torch)")
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
smoke = sys.argv[1] == "1"
if not smoke and ((major, minor) < (2, 11) or not torch.cuda.is_available()):
    sys.exit(f"gpu_check.sh: error: needs a CUDA torch 2.11 or later, found {torch.__version__} "
             f"(CUDA available: {torch.cuda.is_available()}); --smoke runs on any torch")
print(f"gpu_check.sh: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
PY

# --- 2. the project from wheels, offline ------------------------------------------------------
shopt -s nullglob
whl=("$wheels"/*.whl)
((${#whl[@]})) || die "no wheels in $wheels; build them where PyPI is reachable:" \
    ".venv/bin/pip wheel -c constraints.txt --no-deps -w build/wheels . webdataset braceexpand"
rm -rf "$out/site"
"$PYTHON" - "$out/site" "${whl[@]}" <<'PY'
import sys, zipfile
site, wheels = sys.argv[1], sys.argv[2:]
for path in wheels:
    with zipfile.ZipFile(path) as zf:
        if not path.endswith("-none-any.whl"):
            sys.exit(f"gpu_check.sh: error: {path} is not a pure-Python wheel; build it on this machine's platform")
        zf.extractall(site)
print(f"gpu_check.sh: installed {len(wheels)} wheel(s) into {site}: " + ", ".join(p.rsplit('/', 1)[-1] for p in wheels))
PY

# --- 3. run -----------------------------------------------------------------------------------
export PYTHONPATH="$out/site${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${VIEWFUSION_GPU_CHECK_TIMEOUT:-600}" "$PYTHON" "$repo/benchmarks/gpu_check.py" --out "$out" "$@"
