#!/usr/bin/env bash
# Reference tool for XPCS comparisons: boost_corr 0.1.7 (PyPI boost-corr) in
# .cache/boost-venv, CPU only. See shared/reference/xpcs.md §6, §7, §11.
#
# Idempotent; a fast no-op once the stamp matches.
#   benches/boost/setup.sh
#
# Needs the project venv (.cache/venv, from scripts/setup.sh): torch, numpy,
# h5py, scipy and tqdm are taken from it through a .pth file instead of being
# installed again (torch alone is several GB). Only boost-corr and hdf5plugin
# are installed into .cache/boost-venv.
set -euo pipefail

# ---- configuration (edit here) ---------------------------------------------
BOOST_CORR_VERSION="0.1.7"
# What boost_corr actually imports on the CLI/CPU path beyond torch/numpy/h5py
# (xpcs.md §7.7: scipy is needed but undeclared; matplotlib, scikit-image,
# torchvision, nvidia-ml-py, psutil are declared but unused there).
# scipy/tqdm are pinned to what scripts/setup.sh's venv resolves today, so pip
# finds them already satisfied through the .pth and installs nothing; if that
# venv ever moves to other versions, the pinned ones land in boost-venv.
BOOST_REQUIREMENTS=(
  "boost-corr==${BOOST_CORR_VERSION}"
  "hdf5plugin==7.1.0"
  "scipy==1.17.1"
  "tqdm==4.70.1"
)
PTH_NAME="zz_beamflow_venv.pth"
# -----------------------------------------------------------------------------

log() { printf 'boost: %s\n' "$*"; }
die() { printf 'boost: error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
  "") ;;
  -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
CACHE="$ROOT/.cache"
PVENV="$CACHE/venv"
BVENV="$CACHE/boost-venv"
STAMP="$BVENV/.boost-stamp"

# ---- project venv (torch) ------------------------------------------------------
[[ -x "$PVENV/bin/python" ]] || die "project venv $PVENV missing: run scripts/setup.sh first"
# purelib of the project venv and its base interpreter, found without importing torch
mapfile -t _p < <("$PVENV/bin/python" - <<'EOF'
import importlib.util, sys, sysconfig
for m in ("torch", "numpy", "h5py"):
    if importlib.util.find_spec(m) is None:
        sys.exit(m + " not importable from the project venv")
print(sysconfig.get_paths()["purelib"])
print(sys._base_executable)
print("%d.%d" % sys.version_info[:2])
EOF
) || true
((${#_p[@]} == 3)) || die "project venv $PVENV lacks torch/numpy/h5py: run scripts/setup.sh"
PV_SITE="${_p[0]}"
BASE_PY="${_p[1]}"
PV_PYVER="${_p[2]}"

# ---- boost venv ------------------------------------------------------------------
stamp_content() {
  printf 'python=%s\n' "$("$BVENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
  printf 'pth=%s\n' "$PV_SITE"
  printf '%s\n' "${BOOST_REQUIREMENTS[@]}"
}

if [[ -x "$BVENV/bin/python" ]] && ! "$BVENV/bin/python" -c '' 2>/dev/null; then
  log "venv: interpreter broken, recreating"
  rm -rf "$BVENV"
fi
if [[ -x "$BVENV/bin/python" ]]; then
  bv="$("$BVENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [[ "$bv" != "$PV_PYVER" ]]; then
    log "venv: python $bv != project venv's $PV_PYVER (the .pth needs the same ABI), recreating"
    rm -rf "$BVENV"
  fi
fi
if [[ ! -x "$BVENV/bin/python" ]]; then
  log "venv: creating ${BVENV#"$ROOT"/} with $BASE_PY (python $PV_PYVER, same as .cache/venv)"
  "$BASE_PY" -m venv "$BVENV" || die "python -m venv failed"
fi

BV_SITE="$("$BVENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PTH="$BV_SITE/$PTH_NAME"
# The .pth appends the project venv's site-packages to sys.path (after boost-venv's own).
if [[ ! -f "$PTH" || "$(cat "$PTH")" != "$PV_SITE" ]]; then
  printf '%s\n' "$PV_SITE" >"$PTH"
  rm -f "$STAMP"
  log "torch via ${PTH#"$ROOT"/} -> ${PV_SITE#"$ROOT"/}"
fi

want="$(stamp_content)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  # quick check without importing torch (that takes seconds)
  "$BVENV/bin/python" -c '
import importlib.util, sys
miss = [m for m in ("boost_corr", "torch", "hdf5plugin", "scipy", "tqdm", "h5py", "numpy")
        if importlib.util.find_spec(m) is None]
sys.exit("missing: " + " ".join(miss) if miss else 0)' \
    || die "stamp ok but modules missing; delete $STAMP and rerun"
  log "venv ok (boost_corr $BOOST_CORR_VERSION)"
  exit 0
fi

log "venv: pip install ${BOOST_REQUIREMENTS[*]}"
rm -f "$STAMP"
export PIP_CACHE_DIR="$CACHE/pip"
# boost-corr 0.1.7 declares Requires-Python >=3.12 but runs on 3.11 (xpcs.md §0/§11);
# --no-deps: its declared deps include torch/torchvision/matplotlib/scikit-image,
# which would pull GBs that the CLI never imports.
"$BVENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q \
  --no-deps --ignore-requires-python "${BOOST_REQUIREMENTS[@]}" || die "pip install failed"

# full import check (CLI path: multitau + twotime solvers, HDF5 reader with hdf5plugin)
"$BVENV/bin/python" -c '
import boost_corr, torch
from boost_corr.xpcs_aps_8idi.gpu_corr_multitau import solve_multitau
from boost_corr.xpcs_aps_8idi.gpu_corr_twotime import solve_twotime
assert boost_corr.__version__ == "'"$BOOST_CORR_VERSION"'", boost_corr.__version__
assert torch.__file__.startswith("'"$PV_SITE"'"), torch.__file__
' || die "import check failed (import boost_corr)"
[[ -x "$BVENV/bin/boost_corr" ]] || die "boost_corr entry point missing in $BVENV/bin"
printf '%s\n' "$want" >"$STAMP"
log "venv ok (boost_corr $BOOST_CORR_VERSION, torch $("$BVENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))'), installed)"
