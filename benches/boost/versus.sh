#!/usr/bin/env bash
# beamflow against boost_corr on the same file, in one run, end to end
# (process start to results file), multi-tau, CPU, both without frame
# normalisation (-nf 0: the same computation). Prints one JSON line with both
# wall times, the speed-up and the largest g2 difference.
#
#   benches/boost/versus.sh RAW QMAP [OUTDIR]
#
# Needs `make build` (target/release/beamflow) and benches/boost/setup.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
(($# >= 2)) || { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
RAW="$1" QMAP="$2" OUT="${3:-$(mktemp -d)}"
mkdir -p "$OUT/beamflow" "$OUT/boost"
bf="$root/target/release/beamflow"
[[ -x "$bf" ]] || { echo "versus: build first (make build)" >&2; exit 1; }
start=$(date +%s.%N)
"$bf" kernel xpcs multitau -r "$RAW" -q "$QMAP" -o "$OUT/beamflow" -w --no-plots >/dev/null
bf_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
boost_json=$("$here/run.sh" "$RAW" "$QMAP" "$OUT/boost" multitau -- -nf 0)
boost_s=$(printf '%s' "$boost_json" | sed 's/.*"wall_s":\([0-9.]*\).*/\1/')
ours=$(ls "$OUT"/beamflow/*_results.hdf)
theirs=$(printf '%s' "$boost_json" | sed 's/.*"results":"\([^"]*\)".*/\1/')
cmp=$("$root/.cache/venv/bin/python" "$here/compare.py" "$ours" "$theirs" --rtol 1e-3 --atol 1e-3 || true)
g2_rel=$(printf '%s' "$cmp" | sed 's/.*normalized_g2": {[^}]*"max_rel_diff": \([0-9.e+-]*\).*/\1/')
printf '{"raw": "%s", "beamflow_s": %.3f, "boost_s": %s, "speedup": %.2f, "g2_max_rel_diff": %s}\n' \
  "$RAW" "$bf_s" "$boost_s" "$(awk -v a="$boost_s" -v b="$bf_s" 'BEGIN {print a / b}')" "$g2_rel"
