#!/usr/bin/env bash
# Lints every Swift file of the package, the benchmarks and the fuzz targets against the
# repository's .swift-format, every finding an error. It reports and never rewrites: to
# apply the format, run `swift format format --in-place --recursive --configuration
# .swift-format Sources Tests Benchmarks Fuzz`.
# Exit status: swift-format's (0 when there is no finding).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d /opt/swift/usr/bin ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
exec swift format lint --strict --recursive --parallel --configuration .swift-format \
  Sources Tests Benchmarks Fuzz "$@"
