#!/usr/bin/env bash
# Builds the DocC documentation of our modules with every warning an error: broken symbol
# links, unknown articles and undocumented parameters fail the run. The modules are named
# one by one because without --target the plugin also documents the dependencies
# (ArgumentParser), whose own warnings are not ours to fix.
# The swift-docc-plugin comes from Package.swift, resolved like any other dependency.
# Exit status: the plugin's (0 when the catalogs and doc comments build without warnings).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d /opt/swift/usr/bin ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
exec swift package generate-documentation --warnings-as-errors \
  --target PageAlloc --target PageAllocVMalloc --target PageAllocTrace \
  --target PageAllocViews --target PageAllocStress --target PageAllocBench "$@"
