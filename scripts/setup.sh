#!/usr/bin/env bash
# beamflow developer setup: system packages, Python venv (torch/onnxruntime,
# xpcs-viewer/h5py), and .cache/env.sh (sourced by the Makefile as `. .cache/env.sh`).
#
# Idempotent and fast when nothing is missing.
#   scripts/setup.sh               full setup
#   scripts/setup.sh --no-python   skip the venv (engine-only work)
#   BEAMFLOW_SKIP_APT=1 scripts/setup.sh   skip apt checks
#   BEAMFLOW_PYTHON=/path/python3  interpreter used to create the venv
set -euo pipefail

# ---- configuration (edit here) ---------------------------------------------
APT_PACKAGES=(
  build-essential
  pkg-config
  libclang-dev
  libhdf5-dev
  libopenblas-dev
  libopenmpi-dev
  openmpi-bin
  libsqlite3-dev
  ca-certificates
  fonts-dejavu-core   # the font for plots (g2 curves)
  time   # /usr/bin/time -v: peak memory in benches/boost/run.sh
  rsync   # the rsync transfer backend
  openssh-client   # ssh under rsync
  openssh-server   # sshd on a loopback port for the rsync transfer tests
  python3-venv   # only needed if the venv is built from Debian's /usr/bin/python3
  chromium chromium-driver   # the web page's tests drive a headless browser (tests/ui.rs)
  postgresql   # the store's PostgreSQL backend is tested on a private server (scripts/postgres.sh)
)
TORCH_VERSION="2.13.0"
ONNXRUNTIME_VERSION="1.32.0"
NUMPY_VERSION="2.4.6"
# pyXPCSViewer's headless data model (tests/xpcs/check_viewer.py). It pulls
# PySide6, pyqtgraph, scipy, matplotlib, scikit-learn (~1.1 GB); PySide6 is
# pinned too, being the largest. XpcsFile never imports Qt, so no apt libraries
# are needed for it (the GUI itself would want libgl1 libegl1 libxkbcommon0
# libfontconfig1 libglib2.0-0 libdbus-1-3).
XPCS_VIEWER_VERSION="1.2.2"
PYSIDE6_VERSION="6.12.0"
H5PY_VERSION="3.16.0"
# PyTorch's ONNX exporter needs the onnx package: `benches/braggnn_pytorch.py
# export` writes a peak model the way a user outside beamflow would (tests).
ONNX_VERSION="1.23.2"
PY_REQUIREMENTS=(
  "torch==${TORCH_VERSION}"
  "onnxruntime==${ONNXRUNTIME_VERSION}"
  "numpy==${NUMPY_VERSION}"
  "xpcs-viewer==${XPCS_VIEWER_VERSION}"
  "PySide6==${PYSIDE6_VERSION}"
  "h5py==${H5PY_VERSION}"
  "onnx==${ONNX_VERSION}"
)
# -----------------------------------------------------------------------------

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

WITH_PYTHON=1
for arg in "$@"; do
  case "$arg" in
    --no-python) WITH_PYTHON=0 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE="$ROOT/.cache"
VENV="$CACHE/venv"
STAMP="$VENV/.beamflow-stamp"
ENV_FILE="$CACHE/env.sh"
mkdir -p "$CACHE"

# ---- .gitignore ---------------------------------------------------------------
ensure_gitignore() {
  local gi="$ROOT/.gitignore" line
  if [[ ! -e "$gi" ]]; then
    printf '/target\n/.cache\n' >"$gi"
    return
  fi
  for line in /target /.cache; do
    if ! grep -qxF "$line" "$gi"; then
      # keep the file newline-terminated before appending
      if [[ -s "$gi" && -n "$(tail -c1 "$gi")" ]]; then printf '\n' >>"$gi"; fi
      printf '%s\n' "$line" >>"$gi"
    fi
  done
}
ensure_gitignore

# ---- apt ------------------------------------------------------------------------
apt_missing() {
  local p st
  for p in "${APT_PACKAGES[@]}"; do
    st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [[ "$st" == "install ok installed" ]] || printf '%s\n' "$p"
  done
}

ensure_apt() {
  if [[ "${BEAMFLOW_SKIP_APT:-0}" == 1 ]]; then
    log "apt skipped (BEAMFLOW_SKIP_APT=1)"
    return
  fi
  command -v dpkg-query >/dev/null || die "dpkg-query not found (not Debian/Ubuntu?); set BEAMFLOW_SKIP_APT=1 and install deps manually"
  local missing
  mapfile -t missing < <(apt_missing)
  if ((${#missing[@]} == 0)); then
    log "apt ok"
    return
  fi
  log "apt: installing ${missing[*]}"
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
    sudo=(sudo)
  fi
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
  local install=("${apt[@]}" install -y --no-install-recommends "${missing[@]}")
  # apt-get update only when an install is needed: first try with existing lists,
  # then update and retry once.
  if ! "${install[@]}"; then
    log "apt: install failed, running apt-get update and retrying"
    "${apt[@]}" update || die "apt-get update failed"
    "${install[@]}" || die "apt-get install failed: ${missing[*]}"
  fi
  mapfile -t missing < <(apt_missing)
  ((${#missing[@]} == 0)) || die "still missing after apt install: ${missing[*]}"
  log "apt ok (installed)"
}
ensure_apt

# ---- python venv ------------------------------------------------------------------
pick_python() {
  if [[ -n "${BEAMFLOW_PYTHON:-}" ]]; then
    printf '%s\n' "$BEAMFLOW_PYTHON"
  elif command -v python3 >/dev/null; then
    command -v python3
  else
    die "python3 not found (set BEAMFLOW_PYTHON)"
  fi
}

stamp_content() {
  # venv python version + pinned requirements; any change forces a pip run
  printf 'python=%s\n' "$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
  printf '%s\n' "${PY_REQUIREMENTS[@]}"
}

ensure_venv() {
  if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
    log "venv: interpreter broken, recreating"
    rm -rf "$VENV"
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    local py
    py="$(pick_python)"
    log "venv: creating $VENV with $py ($("$py" --version 2>&1))"
    "$py" -m venv "$VENV" || die "python -m venv failed (on Debian's python3, install python3-venv)"
  fi
  local want
  want="$(stamp_content)"
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "venv ok (torch $TORCH_VERSION)"
    return
  fi
  log "venv: pip install ${PY_REQUIREMENTS[*]} (torch is large, this takes a while)"
  rm -f "$STAMP"
  export PIP_CACHE_DIR="$CACHE/pip"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q \
    "${PY_REQUIREMENTS[@]}" || die "pip install failed"
  "$VENV/bin/python" -c 'import torch, onnxruntime, numpy' || die "venv import check failed"
  # pyXPCSViewer's data model must import without a display
  QT_QPA_PLATFORM=offscreen "$VENV/bin/python" -c \
    'import h5py; from pyxpcsviewer.core.xpcs_file import XpcsFile' \
    || die "venv import check failed (pyxpcsviewer XpcsFile, headless)"
  printf '%s\n' "$want" >"$STAMP"
  log "venv ok (torch $TORCH_VERSION, installed)"
}

# Paths inside the venv, found without importing torch (import takes seconds).
venv_paths() {
  "$VENV/bin/python" - <<'EOF'
import glob, importlib.util, os, sys
t = importlib.util.find_spec("torch")
o = importlib.util.find_spec("onnxruntime")
if t is None or o is None:
    sys.exit("torch/onnxruntime not importable from venv")
print(os.path.join(os.path.dirname(t.origin), "lib"))
capi = os.path.join(os.path.dirname(o.origin), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")), key=len)
if not libs:
    sys.exit("libonnxruntime.so* not found in " + capi)
print(libs[0])
EOF
}

TORCH_LIB=""
ORT_LIB=""
if ((!WITH_PYTHON)); then
  # keep the python part of env.sh if a complete venv already exists
  if [[ -f "$STAMP" && -x "$VENV/bin/python" ]] && [[ "$(cat "$STAMP")" == "$(stamp_content 2>/dev/null)" ]]; then
    HAVE_VENV=1
    log "venv skipped (--no-python; existing venv kept in env)"
  else
    HAVE_VENV=0
    log "venv skipped (--no-python)"
  fi
else
  ensure_venv
  HAVE_VENV=1
fi
if ((HAVE_VENV)); then
  mapfile -t _paths < <(venv_paths) || true
  ((${#_paths[@]} == 2)) || die "could not locate torch lib dir / libonnxruntime in venv"
  TORCH_LIB="${_paths[0]}"
  ORT_LIB="${_paths[1]}"
  [[ -d "$TORCH_LIB" ]] || die "torch lib dir missing: $TORCH_LIB"
  [[ -f "$ORT_LIB" ]] || die "onnxruntime library missing: $ORT_LIB"
fi

# ---- env file -------------------------------------------------------------------------
HDF5_DIR_HINT=""
if ! pkg-config --exists hdf5 2>/dev/null && [[ -d /usr/lib/x86_64-linux-gnu/hdf5/serial ]]; then
  HDF5_DIR_HINT=/usr/lib/x86_64-linux-gnu/hdf5/serial
fi
LIBCLANG_DIR=""
for _d in /usr/lib/llvm-*/lib; do
  if [[ -e "$_d/libclang.so" ]]; then LIBCLANG_DIR="$_d"; fi   # keeps the last match (glob order)
done

render_env() {
  cat <<EOF
# Generated by scripts/setup.sh -- do not edit (rerun the script instead).
# POSIX sh: sourced by the Makefile as \`. .cache/env.sh\`.
OMPI_ALLOW_RUN_AS_ROOT=1; export OMPI_ALLOW_RUN_AS_ROOT
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM
OMPI_MCA_rmaps_base_oversubscribe=1; export OMPI_MCA_rmaps_base_oversubscribe
PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe; export PRTE_MCA_rmaps_default_mapping_policy
EOF
  if [[ -n "$HDF5_DIR_HINT" ]]; then
    printf 'HDF5_DIR=%s; export HDF5_DIR\n' "$HDF5_DIR_HINT"
  fi
  if [[ -n "$LIBCLANG_DIR" ]]; then
    printf 'LIBCLANG_PATH=%s; export LIBCLANG_PATH\n' "$LIBCLANG_DIR"
  fi
  if ((HAVE_VENV)); then
    cat <<EOF
BEAMFLOW_VENV='$VENV'; export BEAMFLOW_VENV
case ":\$PATH:" in *":$VENV/bin:"*) ;; *) PATH="$VENV/bin\${PATH:+:\$PATH}" ;; esac; export PATH
# tch: use the torch from the venv python (LIBTORCH_BYPASS_VERSION_CHECK deliberately not set)
LIBTORCH_USE_PYTORCH=1; export LIBTORCH_USE_PYTORCH
case ":\${LD_LIBRARY_PATH:-}:" in *":$TORCH_LIB:"*) ;; *) LD_LIBRARY_PATH="$TORCH_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" ;; esac; export LD_LIBRARY_PATH
ORT_DYLIB_PATH='$ORT_LIB'; export ORT_DYLIB_PATH
EOF
  fi
}

new_env="$(render_env)"
if [[ ! -f "$ENV_FILE" || "$(cat "$ENV_FILE")" != "$new_env" ]]; then
  printf '%s\n' "$new_env" >"$ENV_FILE.tmp"
  mv -f "$ENV_FILE.tmp" "$ENV_FILE"
  log "env written: ${ENV_FILE#"$ROOT"/}"
else
  log "env ok: ${ENV_FILE#"$ROOT"/}"
fi
