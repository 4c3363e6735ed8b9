#!/usr/bin/env bash
# Run the reference boost_corr 0.1.7 on CPU and print one JSON line on stdout:
#   {"tool":"boost_corr","version":"0.1.7","mode":...,"wall_s":...,"peak_rss_mb":...,"results":...}
#
#   benches/boost/run.sh RAW QMAP OUTDIR [multitau|twotime] [-- EXTRA_BOOST_ARGS...]
#
# RAW is an HDF5 stack at /entry/data/data; boost also needs a *_metadata.hdf
# (with /entry/schema_version) next to RAW, or `-- --meta-fname F`.
# Options used (shared/reference/xpcs.md §6-§8, the correct path on this box):
#   -i -1 (CPU)  --max-memory 4  --crop-ratio-threshold 1.0 (avoids the uncropped
#   DataLoader race that corrupts g2, and twotime's crash)  -w -v;  twotime adds
#   -d all (every dynamic bin; restrict with e.g. `-- -d 1-3`, and the frame
#   count with `-- -e 1000`: twotime costs N^2*P flops and N*P*4 bytes).
# EXTRA_BOOST_ARGS come last, so they override (e.g. `-- -nf 0`).
# Env: BOOST_NUM_LOADERS  DataLoader worker processes (default 2, as in §8;
#      "boost" keeps boost's own default of 16).
# Results: OUTDIR/<name>_results.hdf, overwritten each run (-w): use one OUTDIR
# per mode. The boost log and the /usr/bin/time -v report are kept beside it
# as boost_<mode>.log and boost_<mode>.time.
# wall_s and peak_rss_mb come from /usr/bin/time -v: wall time includes Python
# start-up and the torch import; peak RSS is the largest single process
# (the DataLoader workers are separate processes and are not summed).
set -euo pipefail

BOOST_CORR_VERSION="0.1.7"

log() { printf 'boost: %s\n' "$*" >&2; }
die() { printf 'boost: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage 0
(($# >= 3)) || usage 2
RAW="$1" QMAP="$2" OUTDIR="$3"
shift 3
MODE=multitau
if (($#)) && [[ "$1" != -- ]]; then MODE="$1"; shift; fi
if (($#)); then
  [[ "$1" == -- ]] || die "unexpected argument '$1' (extra boost_corr args go after --)"
  shift
fi
EXTRA=("$@")

case "$MODE" in
  multitau) TYPE=Multitau; MODE_ARGS=(); GROUP=/xpcs/multitau/normalized_g2 ;;
  twotime)  TYPE=Twotime;  MODE_ARGS=(-d all); GROUP=/xpcs/twotime/correlation_map ;;
  *) die "mode must be multitau or twotime, not '$MODE'" ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
BVENV="$ROOT/.cache/boost-venv"
BOOST="$BVENV/bin/boost_corr"
BPY="$BVENV/bin/python"

# ---- checks -------------------------------------------------------------------------
TIME=/usr/bin/time
if [[ ! -x "$TIME" ]]; then
  die "$TIME not found: install GNU time (Debian package 'time': apt-get install time). It is not in scripts/setup.sh's APT_PACKAGES."
fi
"$TIME" -v true >/dev/null 2>&1 || die "$TIME does not accept -v (not GNU time?): install Debian package 'time'"
[[ -x "$BOOST" && -x "$BPY" ]] || die "boost_corr not installed in ${BVENV#"$ROOT"/}: run benches/boost/setup.sh"
[[ -f "$RAW" ]] || die "raw file not found: $RAW"
[[ -f "$QMAP" ]] || die "qmap file not found: $QMAP"
RAW="$(cd "$(dirname "$RAW")" && pwd -P)/$(basename "$RAW")"
QMAP="$(cd "$(dirname "$QMAP")" && pwd -P)/$(basename "$QMAP")"

has_meta_arg=0
for a in "${EXTRA[@]}"; do [[ "$a" == --meta-fname* ]] && has_meta_arg=1; done
if ((!has_meta_arg)); then
  shopt -s nullglob
  metas=("$(dirname "$RAW")"/*_metadata.hdf)
  shopt -u nullglob
  ((${#metas[@]})) || die "no *_metadata.hdf next to $RAW: boost_corr needs one (with /entry/schema_version) to write results; pass '-- --meta-fname FILE' otherwise"
fi

mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd -P)"
LOG="$OUTDIR/boost_${MODE}.log"
TIMEF="$OUTDIR/boost_${MODE}.time"
CFG_ARGS=()
NL="${BOOST_NUM_LOADERS:-2}"
if [[ "$NL" != boost ]]; then
  [[ "$NL" =~ ^[1-9][0-9]*$ ]] || die "BOOST_NUM_LOADERS must be a positive integer or 'boost', not '$NL'"
  CFG="$OUTDIR/boost_${MODE}.config.json"
  printf '{"num_loaders": %d}\n' "$NL" >"$CFG"
  CFG_ARGS=(-c "$CFG")
fi

CMD=("$BOOST" -r "$RAW" -q "$QMAP" -o "$OUTDIR" -t "$TYPE" -i -1
  --max-memory 4 --crop-ratio-threshold 1.0 -w -v "${MODE_ARGS[@]}" "${CFG_ARGS[@]}" "${EXTRA[@]}")
{ printf 'boost: run:'; printf ' %q' "$TIME" -v -o "$TIMEF" "${CMD[@]}"; printf '\n'; } >&2
log "log: $LOG"

rc=0
"$TIME" -v -o "$TIMEF" "${CMD[@]}" >"$LOG" 2>&1 || rc=$?
if ((rc != 0)); then
  tail -n 25 "$LOG" | sed 's/^/  | /' >&2
  case "$rc" in
    65) why="input error" ;; 70) why="computing device error" ;; 71) why="import error" ;;
    72) why="qmap error" ;; 73) why="dataset error" ;; 74) why="correlator error" ;;
    75) why="processing error" ;; 76) why="saving error" ;; 77) why="post-processing error" ;;
    78) why="configuration error" ;; *) why="see log" ;;
  esac
  die "boost_corr $MODE failed with exit code $rc ($why); full log: $LOG"
fi

# ---- results path ----------------------------------------------------------------------
RESULTS="$(sed -n 's/.*Succeeded in saving result file: //p' "$LOG" | tail -n 1)"
if [[ -z "$RESULTS" ]]; then
  # boost's own naming (xpcs_result.create_unique_file, with -w), in case the log line changes
  RESULTS="$("$BPY" -c '
import os, sys
n = os.path.splitext(os.path.basename(sys.argv[1]))[0]
if n.endswith((".tpx", ".hdf", ".bin")): n = n[:-4]
print(os.path.join(sys.argv[2], n.rstrip("_metadata") + "_results.hdf"))' "$RAW" "$OUTDIR")"
fi
[[ -f "$RESULTS" ]] || die "boost_corr exited 0 but wrote no results file (expected $RESULTS); log: $LOG"
if ! "$ROOT/.cache/venv/bin/python" -c '
import sys, h5py
with h5py.File(sys.argv[1], "r") as f: sys.exit(0 if sys.argv[2] in f else 1)' "$RESULTS" "$GROUP" 2>/dev/null; then
  die "results file $RESULTS has no $GROUP (log: $LOG)"
fi

# ---- /usr/bin/time -v report -------------------------------------------------------
read -r WALL RSS < <(awk -F': ' '
  /Elapsed \(wall clock\) time/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; w = s }
  /Maximum resident set size/ { r = $2 / 1024 }
  END { if (w == "" || r == "") exit 1; printf "%.2f %.1f\n", w, r }' "$TIMEF") \
  || die "could not parse $TIMEF"
CORR="$(sed -n 's/.*correlation finished in \([0-9.]*\)s.*/\1/p' "$LOG" | tail -n 1)"
log "done: wall ${WALL}s (boost's own correlation step: ${CORR:-?}s), peak RSS ${RSS} MB"

printf '{"tool":"boost_corr","version":"%s","mode":"%s","wall_s":%s,"peak_rss_mb":%s,"results":"%s"}\n' \
  "$BOOST_CORR_VERSION" "$MODE" "$WALL" "$RSS" "$RESULTS"
