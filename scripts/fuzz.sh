#!/usr/bin/env bash
# Fuzzes the readers of user input with cargo fuzz (libFuzzer).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]   build, then fuzz each target for
#                                            SECONDS (default: all, 120 s)
#   scripts/fuzz.sh --list                   the targets
#   scripts/fuzz.sh --merge TARGET           add what the last runs found and
#                                            the committed corpus lacks (new
#                                            coverage only) to the corpus
#   scripts/fuzz.sh --repro TARGET FILE      run one input (e.g. a crash)
#
# Targets: flow, site, protocol (text), h5_xpcs, h5_ptycho, h5_hedm (HDF5;
# h5_xpcs reads IMM too). Their entry points are engine/fuzz/src/lib.rs.
# New inputs go to engine/fuzz/target/corpus/TARGET (not committed); crashes
# to engine/fuzz/artifacts/TARGET. The committed corpus, engine/fuzz/corpus,
# is read as seeds and replayed by `cargo test --test fuzz_corpus`.
#
# cargo-fuzz is installed from crates.io into ~/.cargo/bin when missing. It
# needs nightly flags: the stable toolchain takes them with RUSTC_BOOTSTRAP=1.
# FUZZ_SANITIZER (default none: Rust code is memory safe, and the instrumented
# build then needs no sanitizer runtime; `address` also works where ASan
# does), FUZZ_JOBS (default 1: one core) and FUZZ_KEEP_GOING=1 (go on after
# a failure, libFuzzer's fork mode: every crash lands in the artifacts)
# tune the run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$here/engine/fuzz"
targets=(flow site protocol h5_xpcs h5_ptycho h5_hedm)
sanitizer="${FUZZ_SANITIZER:-none}"
jobs="${FUZZ_JOBS:-1}"

die() {
  echo "fuzz.sh: $*" >&2
  exit 2
}

known() {
  local t
  for t in "${targets[@]}"; do [[ "$t" == "$1" ]] && return 0; done
  die "unknown target '$1' (targets: ${targets[*]})"
}

if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${targets[@]}"
  exit 0
fi

# The environment `make build` writes (LIBTORCH and the rest the kernels
# link against).
if [[ -f "$here/.cache/env.sh" ]]; then
  # shellcheck disable=SC1091
  . "$here/.cache/env.sh"
fi
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz from crates.io" >&2
  cargo install --locked cargo-fuzz
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
bin() { echo "$fuzz/target/$triple/release/$1"; }

build() {
  (cd "$fuzz" && cargo fuzz build --sanitizer "$sanitizer" "$@")
}

# libFuzzer's options for a target: its dictionary, a time limit per input
# (a hang is a bug), and a memory limit (an allocation sized by a field of
# the input is a bug).
options() {
  local dict
  case "$1" in
    flow | site) dict=toml ;;
    protocol) dict=json ;;
    *) dict=hdf5 ;;
  esac
  echo "-dict=$fuzz/dict/$dict.dict -timeout=20 -rss_limit_mb=3072 -malloc_limit_mb=2048"
}

case "${1:-all}" in
  --merge)
    t="${2:?--merge needs a target}"
    known "$t"
    build "$t"
    mkdir -p "$fuzz/target/corpus/$t"
    # shellcheck disable=SC2046
    "$(bin "$t")" $(options "$t") -merge=1 "$fuzz/corpus/$t" "$fuzz/target/corpus/$t"
    exit 0
    ;;
  --repro)
    t="${2:?--repro needs a target}"
    f="${3:?--repro needs a file}"
    known "$t"
    build "$t"
    # shellcheck disable=SC2046
    "$(bin "$t")" $(options "$t") "$f"
    exit 0
    ;;
  all) run=("${targets[@]}") ;;
  *)
    known "$1"
    run=("$1")
    ;;
esac
seconds="${2:-120}"
[[ "$seconds" =~ ^[0-9]+$ ]] || die "SECONDS must be a whole number, got '$seconds'"

if [[ ${#run[@]} -eq 1 ]]; then build "${run[0]}"; else build; fi
# More than one job: libFuzzer runs them as processes logging to fuzz-N.log.
parallel=()
if [[ "${FUZZ_KEEP_GOING:-0}" == 1 ]]; then
  parallel=(-fork="$jobs" -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
elif [[ "$jobs" -gt 1 ]]; then
  parallel=(-jobs="$jobs" -workers="$jobs")
fi
status=0
for t in "${run[@]}"; do
  mkdir -p "$fuzz/target/corpus/$t" "$fuzz/artifacts/$t"
  echo "fuzz.sh: $t for ${seconds}s" >&2
  # shellcheck disable=SC2046
  if ! (cd "$fuzz/target" && "$(bin "$t")" $(options "$t") -max_total_time="$seconds" \
    "${parallel[@]}" -print_final_stats=1 \
    -artifact_prefix="$fuzz/artifacts/$t/" \
    "$fuzz/target/corpus/$t" "$fuzz/corpus/$t"); then
    echo "fuzz.sh: $t found a failure: see $fuzz/artifacts/$t" >&2
    status=1
  fi
done
exit "$status"
