#!/usr/bin/env bash
# Replays the real trace of Tests/Fixtures with the release build of `pagealloc replay
# --json` and compares every figure but the timings with the ones pinned in
# Tests/Fixtures/kmem-6.18-swiftc-tar.expected.json (the figures the PageAllocTrace article
# and the README quote). Exit status 0 when they all match; each difference is printed.
#   scripts/check-replay.sh            (builds pagealloc in release mode first)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d /opt/swift/usr/bin ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
trace=Tests/Fixtures/kmem-6.18-swiftc-tar.trace.gz
expected=Tests/Fixtures/kmem-6.18-swiftc-tar.expected.json
out=$(mktemp)
trap 'rm -f "$out"' EXIT
swift build -c release --product pagealloc >/dev/null
"$(swift build -c release --show-bin-path)/pagealloc" replay "$trace" --json "$out"
python3 - "$expected" "$out" <<'PY'
import json, sys
expected = json.load(open(sys.argv[1]))
got = json.load(open(sys.argv[2]))
bad = [f"{k}: expected {v!r}, got {got.get(k)!r}" for k, v in expected.items() if got.get(k) != v]
for line in bad:
    print("check-replay: " + line, file=sys.stderr)
if bad:
    sys.exit(1)
print(f"check-replay: all {len(expected)} figures match {sys.argv[1]}")
PY
