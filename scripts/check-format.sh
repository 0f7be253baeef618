#!/usr/bin/env bash
# Lints every Swift file of the package, the benchmarks and the fuzz targets against the
# repository's .swift-format, every finding an error. It reports and never rewrites: to
# apply the format, run `swift format format --in-place --recursive --configuration
# .swift-format Sources Tests Benchmarks Fuzz`.
# Exit status: swift-format's (0 when there is no finding).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d /opt/swift/usr/bin ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
swift format lint --strict --recursive --parallel --configuration .swift-format \
  Sources Tests Benchmarks Fuzz "$@"
# One rule swift-format cannot express: no compound assignment through `pointee` on the
# allocator's shared records. ThreadSanitizer instruments `z.pointee.x += 1` as a write to
# the whole zone or pcp record, lock word included, and reports a race with every lock.
if grep -rnE 'pointee(\.[A-Za-z_]+)+ *(&\+|&-|\+|-|\||&|\*|<<|>>)= ' Sources/PageAlloc; then
  echo "check-format: compound assignment through pointee (write x = x + y instead)" >&2
  exit 1
fi
