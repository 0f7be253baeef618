#!/usr/bin/env bash
# Runs a libFuzzer target for a number of seconds (default 60):
#   Fuzz/run.sh api-sequence 60
#   Fuzz/run.sh trace-parser 60
# Builds it first (Fuzz/build.sh; FUZZ_SKIP_BUILD=1 runs the binary already built). The
# corpus lives in Fuzz/corpus/<target>, started from the committed seeds in
# Fuzz/seeds/<target> (the tests replay them: FuzzSeedTests, TraceFuzzSeedTests); crashes
# are written to Fuzz/artifacts/<target>/. Leak detection is off (ASAN_OPTIONS and
# -detect_leaks=0): the Swift runtime's caches look like leaks, and libFuzzer would run
# every input that allocates more than it frees a second time.
# Exit status nonzero on a crash.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${1:?usage: Fuzz/run.sh api-sequence|trace-parser [seconds]}"
seconds="${2:-60}"
if [ -z "${FUZZ_SKIP_BUILD:-}" ]; then "$here/build.sh" "$target" >/dev/null; fi
mkdir -p "$here/corpus/$target" "$here/artifacts/$target"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
# A trap is reported by libFuzzer (deadly signal, stack, the input saved); the Swift
# runtime's own backtracer would first try to read the stack under ASan and stall.
export SWIFT_BACKTRACE="${SWIFT_BACKTRACE:-enable=no}"
seeds=()
if [ -d "$here/seeds/$target" ]; then seeds+=("$here/seeds/$target"); fi
exec "$here/.build/$target" "$here/corpus/$target" "${seeds[@]}" \
  -max_total_time="$seconds" -max_len=4096 -timeout=20 -rss_limit_mb=4096 -detect_leaks=0 -print_final_stats=1 \
  -artifact_prefix="$here/artifacts/$target/"
